"""`compose_vlm`: a generative VLM from a pretrained vision tower and a pretrained causal LM.

    model = vlkit.compose_vlm("openai/clip-vit-base-patch16", "HuggingFaceTB/SmolLM2-135M-Instruct",
                              kind="llava")
    inputs = model.processor(text=model.processor.apply_chat_template(
        [{"role": "user", "content": "<image>\\nWhat is this?"}], add_generation_prompt=True),
        images=[image])
    ids = model.generate(**inputs, max_new_tokens=20)
    model.save_pretrained("composed")   # `vlkit generate --model composed ...` answers with it

The kinds are those of `vlkit.models.fusion_vlm` built on the pretrained parts (the same model
classes and connectors), plus SmolVLM / nanoVLM's pixel-shuffle connector:

* llava: projector per vision token (LLaVA-1.5: the penultimate layer, CLS dropped; `full`
  keeps it), spliced at T placeholders; saved in transformers' LLaVA layout (`hf_llava`).
  `anyres=True` (or `pinpoints=[(h, w), ...]`) makes it LLaVA-NeXT: images tiled into a global
  view plus a grid of tiles chosen per image, the features unpadded with each image's size and
  closed row by row by a learned `image_newline`, so each image fills its own number of
  placeholders (`vlkit.models.llava_next`); saved in vlkit's composed format.
* qformer: BLIP-2's Q-Former (`num_queries` queries, on the penultimate layer as BLIP-2 Sec. 3.1)
  and its projection, spliced at Q placeholders.
* flamingo: a linear map + Perceiver Resampler read by gated cross-attention blocks (tanh gates
  at 0: the composed model starts as the text-only LM); one `<image>` marker per image.
* cogvlm: LLaVA splicing plus a visual expert (QKV / FFN copies of the LM's, Wang et al. 2023).
* pixel_shuffle: the tower's final patch tokens, pixel-shuffled by `scale_factor` and projected
  (Idefics3 / SmolVLM / nanoVLM's connector), spliced at (grid / s)^2 placeholders.
* qwen: Qwen-VL's position-aware adapter (`QwenResampler`: `num_queries` queries with 2-D
  sin-cos positions) over the tower's final patch grid at any `image_size` (the tower's position
  embeddings interpolated), spliced at `num_queries` placeholders (`vlkit.models.qwen_vl`).

What is frozen is `vlkit.models.composition`'s table (the papers' choices; `trainable=` changes
it). The LM's own tokenizer gets the image token as an added special token (unless it has it);
the embedding rows this adds are the mean of the existing rows (`resize_token_embeddings`). The
chat template is the LM's (`chat_template=` overrides it; one is required). Put the image token
into the text of a user turn (`"<image>\\nWhat is this?"`): plain LM templates render string
contents only.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer
from torch import nn

from vlkit.data.anyres_processor import AnyResProcessor
from vlkit.data.chat_template import select_chat_template
from vlkit.data.composed_processor import FixedCountProcessor
from vlkit.data.llava_processor import LlavaProcessor
from vlkit.data.resolution import preprocess_at_size
from vlkit.data.tokenizers.hf_json import HFTokenizer
from vlkit.data.transforms import ImageTransform
from vlkit.errors import CheckpointError
from vlkit.hub.composed_checkpoint import build_composed
from vlkit.hub.hf_causal_lm import CAUSAL_LM_MODEL_TYPES, load_causal_lm
from vlkit.hub.hf_config_files import config_model_type
from vlkit.hub.hf_llava_config import vision_family
from vlkit.hub.loading import from_pretrained, resolve_checkpoint
from vlkit.models.clip import CLIP
from vlkit.models.composition import (
    COMPOSE_KINDS,
    DEFAULT_TRAINABLE,
    check_parts,
    composition_record,
    resize_token_embeddings,
    set_trainable,
)
from vlkit.models.decoder import DecoderLM
from vlkit.models.llava_next import check_pinpoints
from vlkit.models.resnet import ModifiedResNet
from vlkit.models.vit import VisionTransformer

__all__ = ["COMPOSE_KINDS", "compose_vlm", "set_trainable"]

VISION_MODEL_TYPES = ("clip", "siglip")
# Feature defaults per kind: (vision_feature_layer, vision_feature_select_strategy).
# LLaVA-1.5 / BLIP-2 / CogVLM read the penultimate layer (the last one specialises in the
# contrastive [CLS] summary); Flamingo and SmolVLM the tower's final (normed) tokens.
_FEATURES: dict[str, tuple[int | None, str]] = {
    "llava": (-2, "default"),
    "qformer": (-2, "full"),
    "flamingo": (None, "full"),
    "cogvlm": (-2, "default"),
    "pixel_shuffle": (None, "default"),
    "qwen": (None, "default"),
}
# Queries (qformer, qwen) or latents (flamingo) when `num_queries` is not given; Qwen-VL's
# adapter needs a square number (a 2-D grid of query positions; 256 in the paper).
_NUM_QUERIES = {"qwen": 64}


def _load_vision(vision: Any) -> tuple[CLIP, str]:
    """The CLIP whose image tower is used, and its source for the record."""
    if isinstance(vision, CLIP):
        return vision, "vlkit model"
    if not isinstance(vision, str | Path):
        raise ValueError(
            f"vision: expected a CLIP / SigLIP directory, hub id or vlkit CLIP, got "
            f"{type(vision).__name__}"
        )
    path = resolve_checkpoint(vision)
    model_type = config_model_type(path)
    if (path / "config.json").is_file() and model_type not in VISION_MODEL_TYPES:
        raise CheckpointError(
            f"vision: {path / 'config.json'}: model_type {model_type!r} is not a supported vision "
            f"model (supported: {', '.join(VISION_MODEL_TYPES)})"
        )
    model = from_pretrained(path)
    if not isinstance(model, CLIP):
        raise CheckpointError(f"vision: {path} is not a CLIP / SigLIP checkpoint")
    return model, str(vision)


def _load_language(
    language: Any, tokenizer: Any
) -> tuple[DecoderLM, HFTokenizer, str, Path | None]:
    """The LM (a copy when passed in: it is resized), its tokenizer, source and directory."""
    if isinstance(language, DecoderLM):
        if tokenizer is None:
            raise ValueError("tokenizer: required when language is a vlkit DecoderLM")
        lm, source, directory = copy.deepcopy(language), "vlkit model", None
    elif isinstance(language, str | Path):
        directory = resolve_checkpoint(language)
        model_type = config_model_type(directory)
        if model_type not in CAUSAL_LM_MODEL_TYPES:
            raise CheckpointError(
                f"language: {directory / 'config.json'}: model_type {model_type!r} is not a "
                f"supported causal LM (supported: {', '.join(CAUSAL_LM_MODEL_TYPES)})"
            )
        lm, source = load_causal_lm(directory), str(language)
    else:
        raise ValueError(
            f"language: expected a causal-LM directory, hub id or vlkit DecoderLM, got "
            f"{type(language).__name__}"
        )
    if tokenizer is None or isinstance(tokenizer, str | Path):
        where = directory if tokenizer is None else Path(tokenizer)
        try:
            tokenizer = HFTokenizer.from_pretrained(where)
        except ValueError as error:
            raise CheckpointError(f"tokenizer: {error}") from error
    elif not isinstance(tokenizer, HFTokenizer):
        raise ValueError(f"tokenizer: expected an HFTokenizer or a directory, got {tokenizer!r}")
    return lm, copy.copy(tokenizer), source, directory


def _chat_template(tokenizer: HFTokenizer, chat_template: str | None) -> str:
    if chat_template is not None:
        return chat_template
    if tokenizer.chat_template is None:
        raise CheckpointError(
            f"language: {tokenizer.source} has no chat template (chat_template.jinja or "
            "tokenizer_config.json 'chat_template'): pass chat_template="
        )
    return select_chat_template(tokenizer.chat_template, source=tokenizer.source)


def _add_image_token(tokenizer: HFTokenizer, image_token: str) -> Tokenizer:
    """The tokenizer's `tokenizers.Tokenizer` (a copy) holding `image_token` as a special token."""
    backend = Tokenizer.from_str(tokenizer._tokenizer.to_str())
    if backend.token_to_id(image_token) is None:
        backend.add_special_tokens([AddedToken(image_token, special=True, normalized=False)])
    tokenizer._tokenizer = backend
    tokenizer._truncating = {}
    tokenizer.vocab_size = backend.get_vocab_size(with_added_tokens=True)
    return backend


def _check_qwen_tower(tower: nn.Module, image_size: int | None) -> None:
    """The qwen kind reads a ViT's patch grid at `image_size` (at least one patch)."""
    if not isinstance(tower, VisionTransformer):
        raise ValueError(
            f"vision: the qwen kind needs a ViT tower (a patch grid with learned positions), "
            f"got a {type(tower).__name__}"
        )
    if image_size is not None and image_size < tower.config.patch_size:
        raise ValueError(
            f"image_size={image_size}: must be at least the tower's patch size, "
            f"{tower.config.patch_size}"
        )


def _anyres_pinpoints(
    kind: str, tower: nn.Module, anyres: bool, pinpoints: Any
) -> list[list[int]] | None:
    """The checked pinpoints of an anyres llava, or None when anyres is off."""
    if not anyres and pinpoints is None:
        return None
    option = "pinpoints" if pinpoints is not None else "anyres"
    if kind != "llava":
        raise ValueError(f"{option}: only the llava kind tiles images (LLaVA-NeXT), not {kind!r}")
    if not isinstance(tower, VisionTransformer):
        raise ValueError(f"{option}: anyres needs a ViT tower, got a {type(tower).__name__}")
    return check_pinpoints(pinpoints, tower.config.image_size)


def _feature_choice(
    kind: str, tower: VisionTransformer, layer: Any, strategy: str | None
) -> tuple[list[int] | None, bool]:
    """(feature layers or None for the final tokens, drop_first) for `kind`."""
    default_layer, default_strategy = _FEATURES[kind]
    strategy = strategy or default_strategy
    if strategy not in ("default", "full"):
        raise ValueError(
            f"vision_feature_select_strategy must be 'default' or 'full', got {strategy!r}"
        )
    layer = default_layer if layer is None else layer
    layers = None if layer is None else ([layer] if isinstance(layer, int) else list(layer))
    depth = tower.config.layers
    for index in layers or []:
        if not isinstance(index, int) or not -depth - 1 <= index <= depth:
            raise ValueError(
                f"vision_feature_layer {index!r} is out of range for a vision tower of {depth} "
                f"layers (hidden states {-depth - 1}..{depth})"
            )
    # transformers' LLaVA drops token 0 for "default" whatever the tower; the other kinds only
    # drop a class token.
    drop = strategy == "default" and (kind in ("llava", "cogvlm") or tower.config.class_token)
    return layers, drop


def compose_vlm(
    vision: str | Path | CLIP,
    language: str | Path | DecoderLM,
    kind: str = "llava",
    *,
    trainable: list[str] | tuple[str, ...] | None = None,
    tokenizer: HFTokenizer | str | Path | None = None,
    chat_template: str | None = None,
    image_token: str = "<image>",
    vision_feature_layer: int | list[int] | None = None,
    vision_feature_select_strategy: str | None = None,
    projector: str = "mlp2x_gelu",
    num_queries: int | None = None,
    qformer_layers: int = 2,
    perceiver_layers: int = 2,
    cross_attention_every: int = 1,
    scale_factor: int = 2,
    image_size: int | None = None,
    anyres: bool = False,
    pinpoints: list[tuple[int, int]] | list[list[int]] | None = None,
    seed: int = 0,
) -> nn.Module:
    """A generative VLM of `kind` from a pretrained image tower and a pretrained causal LM.

    Args:
        vision: A Hugging Face CLIP / SigLIP directory or hub id, or a vlkit `CLIP` (a ViT
            tower, or a ModifiedResNet one: its feature map's tokens; a llava on it is saved in
            vlkit's format, transformers' LLaVA reads ViTs only).
        language: A Llama / Qwen2 / Qwen3 causal-LM directory or hub id, or a vlkit `DecoderLM`
            (copied, then `tokenizer` is required).
        kind: "llava", "qformer", "flamingo", "cogvlm", "pixel_shuffle" or "qwen".
        trainable: The parts that train (`vlkit.models.composition.COMPOSE_PARTS`); default:
            the paper's choice (`DEFAULT_TRAINABLE`).
        tokenizer: An `HFTokenizer` or its directory; default: the language directory's.
        chat_template: Jinja source overriding the LM's chat template.
        image_token: The placeholder string (added to the tokenizer when missing).
        vision_feature_layer: Hidden-state index (or indices, concatenated) the connector reads;
            default -2 for llava / qformer / cogvlm, the tower's final tokens otherwise. For a
            ResNet tower: "final" (default) or a stage, "layer3".
        vision_feature_select_strategy: "default" drops the CLS token (transformers' LLaVA:
            token 0 for llava / cogvlm), "full" keeps every token; default: "full" for qformer
            and flamingo.
        projector: llava / cogvlm projector type (`vlkit.fusion.projector.build_projector`).
        num_queries: Q-Former queries (qformer), Perceiver latents (flamingo) or the adapter's
            queries (qwen, a square number); default 32, 64 for qwen.
        qformer_layers, perceiver_layers, cross_attention_every: Connector sizes.
        scale_factor: pixel_shuffle's factor s (the grid side must be a multiple).
        image_size: qwen only: the side images are resized to for the tower (Qwen-VL's 448 px
            stage), its position embeddings interpolated; default: the tower's own size.
        anyres: llava only: LLaVA-NeXT's tiling (`vlkit.models.llava_next.AnyResLlavaVLM`),
            with LLaVA-NeXT's grids (1x2, 2x1, 2x2, 3x1, 1x3 tiles of the tower's size).
        pinpoints: llava only: the (height, width) grids to choose from, multiples of the
            tower's image size; giving them turns anyres on.
        seed: Seeds the new modules' initialisation (the global RNG is left as it was).

    Returns:
        The model (`LlavaVLM` (`AnyResLlavaVLM` with anyres), `QFormerVLM`, `FlamingoVLM`,
        `CogVLM`, `QwenVLM` or, for pixel_shuffle, a `SplicingVLM`), in train mode with its
        frozen parts set, and the attributes `processor` (prompt + images -> `input_ids`,
        `attention_mask`, `pixel_values`, and `image_sizes` with anyres), `tokenizer` (the
        LM's `HFTokenizer` with the image token), `composition` (the parts record) and
        `compose_spec`. `save_pretrained(dir)` writes it for `vlkit.from_pretrained`.

    Raises:
        ValueError: An unknown kind, part or option, or widths a kind cannot join, naming it.
        vlkit.errors.CheckpointError: A directory of an unsupported model_type, or an LM without
            a chat template, naming the file and key.
    """
    if kind not in COMPOSE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(COMPOSE_KINDS)}, got {kind!r}")
    parts = check_parts(kind, DEFAULT_TRAINABLE[kind] if trainable is None else trainable)
    if num_queries is None:
        num_queries = _NUM_QUERIES.get(kind, 32)
    if image_size is not None and kind != "qwen":
        raise ValueError(f"image_size: only the qwen kind takes another image size, not {kind!r}")
    clip, vision_source = _load_vision(vision)
    # A CLIP passed in is left as it was (its tower gets frozen here): the VLM holds a copy.
    tower = copy.deepcopy(clip.vision) if isinstance(vision, CLIP) else clip.vision
    is_vit = isinstance(tower, VisionTransformer)
    if not is_vit and not isinstance(tower, ModifiedResNet):
        raise ValueError(f"vision: a {type(tower).__name__} image tower is not supported")
    if kind == "qwen":
        _check_qwen_tower(tower, image_size)
    grids = _anyres_pinpoints(kind, tower, anyres, pinpoints)
    lm, hf_tokenizer, language_source, _ = _load_language(language, tokenizer)
    template = _chat_template(hf_tokenizer, chat_template)
    hf_tokenizer.chat_template = template
    added = hf_tokenizer._tokenizer.token_to_id(image_token) is None
    backend = _add_image_token(hf_tokenizer, image_token)
    image_token_id = int(backend.token_to_id(image_token))
    resize_token_embeddings(
        lm, max(image_token_id + 1, hf_tokenizer.vocab_size), [image_token_id] if added else []
    )
    if is_vit:
        layers, drop_first = _feature_choice(
            kind, tower, vision_feature_layer, vision_feature_select_strategy
        )
        if grids is not None and int(tower.config.class_token) != int(drop_first):
            raise ValueError(
                f"vision_feature_select_strategy={vision_feature_select_strategy!r}: anyres "
                "stitches square patch grids, so exactly the tower's class token is dropped "
                f"('{'default' if tower.config.class_token else 'full'}' for this tower)"
            )
        if kind == "qwen" and tower.config.class_token and not drop_first:
            raise ValueError(
                "vision_feature_select_strategy='full': the qwen adapter reads a 2-D patch grid, "
                "so a tower's class token must be dropped ('default')"
            )
        source = None
        try:
            family = vision_family(tower)
        except CheckpointError:
            family = "clip" if tower.config.class_token else "siglip"
    else:  # a ResNet's feature map (`frozen_vision.tower_tokens`): "final" or "layerK"
        if vision_feature_layer is not None and not isinstance(vision_feature_layer, str):
            raise ValueError(
                f"vision_feature_layer {vision_feature_layer!r}: a ResNet tower takes 'final' "
                "or a stage name ('layer1'..'layer4')"
            )
        layers, drop_first, family = None, False, "clip"
        source = vision_feature_layer or "final"
    config = lm.config
    eos = config.eos_token_id if config.eos_token_id is not None else hf_tokenizer.eot_token_id
    spec: dict[str, Any] = {
        "kind": kind,
        "vision": {"tower": asdict(tower.config), "family": family, "feature_layer": layers,
                   "source": source, "drop_first": drop_first},
        "decoder": asdict(config),
        "image_token_id": image_token_id,
        "image_token": image_token,
        "connector": {"projector": projector, "num_queries": num_queries,
                      "qformer_layers": qformer_layers, "perceiver_layers": perceiver_layers,
                      "cross_attention_every": cross_attention_every,
                      "scale_factor": scale_factor},
        "eos_token_id": eos,
        "pad_token_id": config.pad_token_id,
    }  # fmt: skip
    if grids is not None:
        spec["anyres"] = {"pinpoints": grids}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_composed(spec, tower, lm)
    model.train()
    set_trainable(model, kind, parts)
    special = dict(hf_tokenizer.special_tokens)
    if "pad_token" not in special and "eos_token" in special:
        special["pad_token"] = special["eos_token"]  # batches need one; transformers' usual fix
    # A ViT llava / cogvlm expands `<image>` per patch token as transformers' LlavaProcessor
    # (written in its layout); every other model fills a fixed count per image.
    preprocess = clip.config.preprocess
    if image_size is not None:  # qwen at another resolution: the same steps, another size
        preprocess = preprocess_at_size(preprocess, image_size)
        spec["vision"]["image_size"] = image_size
    processor = LlavaProcessor(
        backend, ImageTransform(preprocess),
        tower.config.patch_size if is_vit else 32, "default" if drop_first else "full",
        int(is_vit and tower.config.class_token), image_token, template, special,
    )  # fmt: skip
    if grids is not None:  # tiles, a count per image (LLaVA-NeXT)
        processor = AnyResProcessor.from_llava(processor, grids)
    elif not (is_vit and kind in ("llava", "cogvlm")):
        processor = FixedCountProcessor.from_llava(processor, model.num_image_tokens)
    source = Path(hf_tokenizer.source)
    config_file = (source if source.is_dir() else source.parent) / "tokenizer_config.json"
    if config_file.is_file():
        processor.tokenizer_config = json.loads(config_file.read_text())
    model.processor = processor
    model.tokenizer = hf_tokenizer
    model.image_token = image_token
    model.composition = composition_record(
        model, kind, {"vision": vision_source, "language": language_source}
    )
    return model
