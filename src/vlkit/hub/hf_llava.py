"""Hugging Face LLaVA checkpoints (`LlavaForConditionalGeneration`) <-> vlkit's `LlavaVLM`, both ways.

Layout, as transformers 5.25's `save_pretrained` writes it (models/llava/modeling_llava.py
and its checkpoint conversion mapping): `vision_tower.*` (a `CLIPVisionModel` /
`SiglipVisionModel`'s transformer, converted by `hf_clip`'s rules: q/k/v fused on load, split on
save), `multi_modal_projector.linear_1/linear_2` (an MLP with `projector_hidden_act`, biases
when `multimodal_projector_bias`), `language_model.model.*` (a Llama / Qwen2 / Qwen3 `*Model`,
names as vlkit's `DecoderLM`) and `language_model.lm_head.weight` (absent when tied). Its
in-memory names (`model.vision_tower.*`, `model.language_model.*`, `lm_head.weight`) and the
hub's transformers 4 files (`vision_tower.vision_model.*`) are renamed to it first.

The image features are the tower's `hidden_states[vision_feature_layer]` (an int, or a list
concatenated along the width), token 0 dropped for `vision_feature_select_strategy="default"`:
`VisionTokens(tower, "hidden:-2", drop_first=True)` (`vlkit.models.frozen_vision`).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from tokenizers import Tokenizer

from vlkit.data.llava_processor import LlavaProcessor
from vlkit.data.transforms import ImageTransform
from vlkit.errors import CheckpointError
from vlkit.fusion.projector import PROJECTOR_ACTIVATIONS, LlavaProjector
from vlkit.hub.hf_causal_lm import (
    CAUSAL_LM_MODEL_TYPES,
    causal_lm_config,
    causal_lm_config_to_hf,
)
from vlkit.hub.hf_clip import config_from_hf, to_hf_state_dict
from vlkit.hub.hf_llava_processor import read_llava_processor, save_llava_processor
from vlkit.hub.hf_smolvlm import SMOLVLM_WEIGHT_FILES, default_eos_token_id
from vlkit.hub.weights import (
    find_weights,
    load_into,
    read_weights,
    state_dict_problems,
    write_json,
    write_safetensors,
)
from vlkit.models.decoder import DecoderConfig, DecoderLM
from vlkit.models.frozen_vision import VisionTokens, hidden_layers
from vlkit.models.fusion_vlm import FusionVLMConfig
from vlkit.models.llava import LlavaVLM
from vlkit.models.vit import VisionTransformer, ViTConfig

__all__ = [
    "LLAVA_TEXT_MODEL_TYPES",
    "LLAVA_VISION_MODEL_TYPES",
    "build_llava",
    "is_llava_directory",
    "llava_config_to_hf",
    "llava_processor_for_model",
    "load_llava",
    "save_llava",
    "to_hf_llava_state_dict",
]

# vision_config.model_type -> the hf_clip family whose rules convert the tower.
LLAVA_VISION_MODEL_TYPES = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}
LLAVA_TEXT_MODEL_TYPES = CAUSAL_LM_MODEL_TYPES  # llama, qwen2, qwen3 (`hf_causal_lm`)
# LlavaConfig's vision_config when config.json has none (configuration_llava.py).
_DEFAULT_VISION = dict(model_type="clip_vision_model", intermediate_size=4096, hidden_size=1024,
                       patch_size=14, image_size=336, num_hidden_layers=24, num_attention_heads=16)  # fmt: skip
# LlamaConfig defaults for keys a text_config may omit (configuration_llama.py).
_LLAMA_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, rms_norm_eps=1e-6,
                       max_position_embeddings=2048)  # fmt: skip
# Other layouts -> the one transformers 5.25's `save_pretrained` writes (first match wins): its
# in-memory names (`model.*`, `lm_head.*`) and the hub's transformers 4 files (the vision tower
# under `vision_model.`).
_LAYOUTS = (
    ("model.vision_tower.vision_model.", "vision_tower."),
    ("vision_tower.vision_model.", "vision_tower."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)
_IGNORED_SUFFIXES = (".position_ids", "rotary_emb.inv_freq")


def is_llava_directory(directory: str | Path) -> bool:
    """Whether `directory` has a `config.json` with model_type "llava" (False when unreadable)."""
    try:
        model_type = json.loads((Path(directory) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return False
    return model_type == "llava"


def _vision_tower(vision: dict[str, Any], source: str) -> tuple[VisionTransformer, str]:
    """The vision tower of a `vision_config` dict and its family ("clip" / "siglip")."""
    model_type = vision.get("model_type", "clip_vision_model")
    family = LLAVA_VISION_MODEL_TYPES.get(model_type)
    if family is None:
        raise CheckpointError(
            f"{source}: vision_config.model_type {model_type!r} is not supported "
            f"(supported: {', '.join(LLAVA_VISION_MODEL_TYPES)})"
        )
    use_head = family == "siglip" and bool(vision.get("vision_use_head", True))
    # hf_clip reads a whole CLIP/SigLIP config; its text tower is discarded (SigLIP's joint
    # width is the vision width, so the text side is given that projection size).
    width = vision.get("hidden_size", 768)
    config = config_from_hf(
        {"model_type": family, "vision_config": {**vision, "vision_use_head": True},
         "text_config": {"projection_size": width}},
        source,
    )  # fmt: skip
    tower = VisionTransformer(config.vision)
    if family == "siglip" and not use_head:
        tower.attention_pool = None  # SiglipVisionModel(vision_use_head=False) has no head
    return tower, family


def _decoder_config(text: dict[str, Any], tied: bool, source: str) -> DecoderConfig:
    """The `DecoderConfig` of a `text_config` dict: the causal-LM dispatcher on its model_type
    (`hf_causal_lm.causal_lm_config`), errors naming `text_config`."""
    model_type = text.get("model_type", "llama")
    if model_type not in LLAVA_TEXT_MODEL_TYPES:
        raise CheckpointError(
            f"{source}: text_config.model_type {model_type!r} is not supported "
            f"(supported: {', '.join(LLAVA_TEXT_MODEL_TYPES)})"
        )
    text = {**_LLAMA_DEFAULTS, "model_type": model_type, **text, "tie_word_embeddings": tied}
    try:
        return causal_lm_config(text, f"{source}: text_config")
    except (KeyError, TypeError, ValueError, NotImplementedError) as error:
        raise CheckpointError(f"{source}: text_config: {error}") from error


def build_llava(hf_config: dict[str, Any], source: str = "config.json") -> LlavaVLM:
    """An uninitialised `LlavaVLM` shaped like a LLaVA `config.json` dict (vision tower frozen,
    as LLaVA trains with it frozen)."""
    if hf_config.get("model_type") != "llava":
        raise CheckpointError(f"{source}: model_type {hf_config.get('model_type')!r} is not llava")
    vision_hf = hf_config.get("vision_config") or _DEFAULT_VISION
    text_hf = hf_config.get("text_config") or {"model_type": "llama"}
    tower, _ = _vision_tower(vision_hf, source)
    tied = bool(hf_config.get("tie_word_embeddings") or text_hf.get("tie_word_embeddings"))
    decoder = _decoder_config(text_hf, tied, source)
    layer = hf_config.get("vision_feature_layer", -2)
    layers = [layer] if isinstance(layer, int) else list(layer)
    if not layers or not all(isinstance(i, int) for i in layers):
        raise CheckpointError(f"{source}: vision_feature_layer must be an int or a list of ints")
    strategy = hf_config.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise CheckpointError(
            f"{source}: vision_feature_select_strategy {strategy!r} is not 'default' or 'full'"
        )
    depth = tower.config.layers
    for index in layers:
        if not -depth - 1 <= index <= depth:
            raise CheckpointError(
                f"{source}: vision_feature_layer {index} is out of range for a vision tower of "
                f"{depth} layers (hidden states {-depth - 1}..{depth})"
            )
    image_token_id = int(hf_config.get("image_token_index", hf_config.get("image_token_id", 32000)))
    act = hf_config.get("projector_hidden_act", "gelu")
    if act not in PROJECTOR_ACTIVATIONS:
        raise CheckpointError(
            f"{source}: projector_hidden_act {act!r} is not supported "
            f"(supported: {', '.join(PROJECTOR_ACTIVATIONS)})"
        )
    try:
        vision = VisionTokens(
            tower, "hidden:" + ",".join(map(str, layers)), True, strategy == "default"
        )
        width = tower.width * len(layers)
        projector = LlavaProjector(
            width, decoder.hidden_size, "mlp2x_gelu",
            bool(hf_config.get("multimodal_projector_bias", True)), act,
        )  # fmt: skip
        config = FusionVLMConfig(
            kind="llava", decoder=decoder, image_token_id=image_token_id, vision_dim=width,
            image_size=tower.config.image_size,
        )  # fmt: skip
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from error
    count = tower.config.grid_size**2 + int(tower.config.class_token) - int(vision.drop_first)
    model = LlavaVLM(vision, projector, DecoderLM(decoder), image_token_id, count, config)
    model.hf_config = hf_config
    return model


def _vision_family(tower: VisionTransformer) -> str:
    """ "clip" or "siglip": which transformers vision model has this tower's architecture."""
    cfg = tower.config
    if cfg.class_token and cfg.pre_norm and not cfg.patch_bias and cfg.pool == "cls":
        return "clip"
    if not cfg.class_token and not cfg.pre_norm and cfg.patch_bias and cfg.pool == "map":
        return "siglip"
    raise CheckpointError(
        "cannot write a transformers LLaVA: the vision tower is neither CLIP-like (class token, "
        "pre-norm, no patch bias) nor SigLIP-like"
    )


def _hf_pairs(model: LlavaVLM) -> list[tuple[str, list[str]]]:
    """Each vlkit parameter name with its transformers name(s) (three for a fused q/k/v)."""
    tower = _tower(model)
    # hf_clip's renaming reads only `model_type` from the config.
    family = SimpleNamespace(model_type=_vision_family(tower))
    pairs = []
    for key, value in model.state_dict().items():
        if key.startswith("vision.tower."):
            vision_key = "vision." + key[len("vision.tower.") :]
            hf = to_hf_state_dict({vision_key: value}, family)  # type: ignore[arg-type]
            names = ["vision_tower." + name.removeprefix("vision_model.") for name in hf]
        elif key.startswith("connector.proj."):
            index, _, name = key[len("connector.proj.") :].partition(".")
            names = [f"multi_modal_projector.linear_{1 if index == '0' else 2}.{name}"]
        elif key.startswith("decoder.model."):
            names = ["language_model.model." + key[len("decoder.model.") :]]
        elif key == "decoder.lm_head.weight":
            tied = model.decoder.config.tie_word_embeddings
            names = [] if tied else ["language_model.lm_head.weight"]
        else:
            names = [key]
        pairs.append((key, names))
    return pairs


def _tower(model: LlavaVLM) -> VisionTransformer:
    vision = model.vision
    tower = getattr(vision, "tower", vision)
    if not isinstance(vision, VisionTokens) or not isinstance(tower, VisionTransformer):
        raise CheckpointError(
            "cannot write a transformers LLaVA: the vision module must be a VisionTokens over a "
            f"VisionTransformer, got {type(vision).__name__}"
        )
    return tower


def to_hf_llava_state_dict(model: LlavaVLM) -> dict[str, torch.Tensor]:
    """The model's weights under `LlavaForConditionalGeneration` names (q/k/v split)."""
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, names in _hf_pairs(model):
        parts = state[key].chunk(len(names), dim=0) if len(names) > 1 else [state[key]]
        out.update(zip(names, parts, strict=False))
    return out


def llava_state_dict(
    hf_state: dict[str, torch.Tensor], model: LlavaVLM, source: str
) -> dict[str, torch.Tensor]:
    """A transformers 4 or 5 LLaVA state dict -> `model`'s names, checked key by key.

    Raises:
        CheckpointError: Missing, unexpected or mis-shaped keys (transformers names), naming
            `source`.
    """
    present: dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        for old, new in _LAYOUTS:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        present[key] = value
    if model.decoder.config.tie_word_embeddings:
        present.pop("language_model.lm_head.weight", None)  # some files keep the tied copy
    problems = state_dict_problems(to_hf_llava_state_dict(model), present, "config")
    if problems:
        raise CheckpointError(f"{source} does not match its config: " + "; ".join(problems))
    state = {}
    for key, names in _hf_pairs(model):
        if names:
            state[key] = torch.cat([present[name] for name in names], dim=0)
    if model.decoder.config.tie_word_embeddings:
        state["decoder.lm_head.weight"] = state["decoder.model.embed_tokens.weight"]
    return state


def load_llava(directory: str | Path) -> LlavaVLM:
    """Loads a transformers LLaVA directory into a `LlavaVLM` (eval mode; weights only).

    Raises:
        CheckpointError: An unreadable or unsupported config.json (naming the key, e.g.
            `vision_config.model_type`), or weights that do not match it.
    """
    directory = Path(directory)
    config_path = directory / "config.json"
    try:
        hf_config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {config_path}: {error}") from error
    model = build_llava(hf_config, str(config_path))
    weights = find_weights(directory, SMOLVLM_WEIGHT_FILES)
    load_into(model, llava_state_dict(read_weights(weights), model, str(weights)), str(weights))
    model.eos_token_id = default_eos_token_id(directory, hf_config)
    model.pad_token_id = default_eos_token_id(directory, hf_config, "pad_token_id")
    model.source_directory = str(directory)
    return model.eval()


def _vision_config_to_hf(config: ViTConfig, family: str, head: bool) -> dict[str, Any]:
    out = {
        "model_type": f"{family}_vision_model", "hidden_size": config.width,
        "intermediate_size": config.mlp_dim, "num_hidden_layers": config.layers,
        "num_attention_heads": config.heads, "hidden_act": config.activation,
        "layer_norm_eps": config.layer_norm_eps, "attention_dropout": config.attention_dropout,
        "image_size": config.image_size, "patch_size": config.patch_size,
        "num_channels": config.num_channels,
    }  # fmt: skip
    if family == "siglip":
        out["vision_use_head"] = head
    return out


def _text_config_to_hf(config: DecoderConfig) -> dict[str, Any]:
    """The `text_config` of a decoder: `hf_causal_lm`'s config.json without the causal-LM
    `architectures` (a LLaVA's language model is the bare `*Model`)."""
    try:
        text = causal_lm_config_to_hf(config)
    except ValueError as error:
        raise CheckpointError(f"cannot write a transformers LLaVA: {error}") from error
    text.pop("architectures", None)
    return {key: value for key, value in text.items() if value is not None}


def llava_config_to_hf(model: LlavaVLM) -> dict[str, Any]:
    """The `config.json` of `model` for transformers' `LlavaConfig`. A loaded model's own
    config.json is the base, so keys vlkit does not model (dtype, token ids) are kept.

    Raises:
        CheckpointError: The model has no transformers equivalent (its vision module does not
            read ViT hidden states, or its projector is not a two-layer MLP), naming why.
    """
    tower = _tower(model)
    vision: VisionTokens = model.vision  # type: ignore[assignment]
    layers = hidden_layers(vision.source)
    if layers is None:
        raise CheckpointError(
            f"cannot write a transformers LLaVA: vision tokens {vision.source!r} (after the "
            "tower's final LayerNorm) have no transformers equivalent; build the model on "
            "'hidden:-1' (the last block, before that norm) or 'hidden:-2' (LLaVA-1.5)"
        )
    projector = model.connector
    if not isinstance(projector, LlavaProjector) or projector.projector_type != "mlp2x_gelu":
        raise CheckpointError(
            "cannot write a transformers LLaVA: its projector is a two-layer MLP "
            "(projector_type 'mlp2x_gelu')"
        )
    base = dict(getattr(model, "hf_config", None) or {})
    family = _vision_family(tower)
    vision_hf = {
        **(base.get("vision_config") or {}),
        **_vision_config_to_hf(tower.config, family, tower.attention_pool is not None),
    }
    text_base = base.get("text_config") or {}
    decoder = model.decoder.config
    text_hf = (
        {**_text_config_to_hf(decoder), **text_base} if text_base else _text_config_to_hf(decoder)
    )
    text_hf["tie_word_embeddings"] = decoder.tie_word_embeddings
    for key in ("eos_token_id", "pad_token_id"):
        value = getattr(model, key, None)
        if value is not None and key not in text_hf:
            text_hf[key] = value
    base.pop("image_token_id", None)
    return {
        **base,
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "vision_config": vision_hf,
        "text_config": text_hf,
        "vision_feature_layer": layers[0] if len(layers) == 1 else layers,
        "vision_feature_select_strategy": "default" if vision.drop_first else "full",
        "projector_hidden_act": projector.activation,
        "multimodal_projector_bias": projector.bias,
        "image_token_index": model.image_token_id,
        "image_seq_length": model.num_image_tokens,
        "tie_word_embeddings": decoder.tie_word_embeddings,
    }


def save_llava(model: LlavaVLM, directory: str | Path, processor: Any = None) -> None:
    """Writes `model` as a transformers LLaVA directory: config.json, model.safetensors,
    generation_config.json, and the processor's files (tokenizer, chat template, image
    processor) when `processor` is given or the model was loaded from a directory that has them.

    Raises:
        CheckpointError: The model has no transformers equivalent (`llava_config_to_hf`).
    """
    directory = Path(directory)
    config = llava_config_to_hf(model)
    directory.mkdir(parents=True, exist_ok=True)
    state = to_hf_llava_state_dict(model)
    write_safetensors(state, directory / "model.safetensors", metadata={"format": "pt"})
    write_json(config, directory / "config.json")
    generation = {
        key: value
        for key in ("eos_token_id", "pad_token_id")
        if (value := getattr(model, key, None)) is not None
    }
    if generation:
        write_json(generation, directory / "generation_config.json")
    source = getattr(model, "source_directory", None)
    if processor is None and source and (Path(source) / "tokenizer.json").is_file():
        processor = read_llava_processor(source)
    if processor is not None:
        save_llava_processor(processor, directory, _vision_family(_tower(model)))


def llava_processor_for_model(
    model: LlavaVLM,
    tokenizer: Tokenizer,
    transform: ImageTransform,
    special_tokens: dict[str, str] | None = None,
    chat_template: str | None = None,
    image_token: str = "<image>",
) -> LlavaProcessor:
    """The `LlavaProcessor` of a vlkit-built LLaVA (e.g. a `vlkit train-vlm` llava run on a ViT's
    "hidden:-2" tokens), so that `save_pretrained(dir, processor=...)` writes a directory
    transformers' `AutoProcessor` loads: the patch size, the extra CLS token and the selection
    strategy come from the model's vision module.

    Args:
        model: The model.
        tokenizer: Its `tokenizers.Tokenizer` (a `WordTokenizer`'s `backend`, an LM's
            tokenizer.json), holding `image_token` at `model.image_token_id`.
        transform: The image tower's eval transform (`vlkit.get_transform(clip)`).
        special_tokens: `bos_token`, `eos_token`, `pad_token`, `unk_token` strings.
        chat_template: A Jinja chat template, or None.
        image_token: The placeholder string.

    Raises:
        CheckpointError: `image_token` is not the model's image token id.
    """
    tower = _tower(model)
    if tokenizer.token_to_id(image_token) != model.image_token_id:
        raise CheckpointError(
            f"the tokenizer's {image_token!r} is id {tokenizer.token_to_id(image_token)}, "
            f"the model's image_token_id is {model.image_token_id}"
        )
    drop_first = bool(getattr(model.vision, "drop_first", False))
    return LlavaProcessor(
        tokenizer, transform, tower.config.patch_size, "default" if drop_first else "full",
        int(tower.config.class_token), image_token, chat_template, special_tokens,
    )  # fmt: skip


# `LlavaVLM.save_pretrained` delegates here: models cannot import the format layer.
LlavaVLM.checkpoint_writer = save_llava
