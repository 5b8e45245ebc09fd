"""vlkit's own directory format for composed VLMs (`vlkit.compose_vlm`) of the kinds that have no
transformers equivalent (qformer, flamingo, cogvlm, pixel_shuffle, qwen; llava is written in
transformers' LLaVA layout by `hf_llava`).

A directory holds

* `composed_vlm_config.json`: `{"format": "vlkit-composed-vlm", "kind", "vision": {"tower": the
  `ViTConfig` / `ResNetConfig` (with its "type"), "family": "clip" | "siglip", "feature_layer":
  [ints] | null (a ViT's final tokens), "source" (a ResNet's "final" / "layerK"), "drop_first"}, "decoder": the `DecoderConfig`, "image_token_id", "connector": {...
  sizes}, "eos_token_id", "pad_token_id", "composition": the parts record
  (`vlkit.models.composition.composition_record`)}`;
* `model.safetensors`: the model's `state_dict` (vlkit names; a tied `lm_head` is not stored);
* the processor's files (`hf_llava_processor.save_llava_processor`): tokenizer.json,
  tokenizer_config.json, processor_config.json (image processor inside), chat_template.jinja.

A llava whose tower is a ResNet (transformers' LLaVA reads ViT hidden states only) is written in
this format too, and so is an anyres llava (LLaVA-NeXT tiling, `vlkit.models.llava_next`): its
config has `"anyres": {"pinpoints": [[height, width], ...]}` and its processor is an
`AnyResProcessor` with those pinpoints.

`build_composed` makes the model of a spec (used by `compose_vlm` with the pretrained parts and
by `load_composed` with random ones, then filled from the weights).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlkit.data.anyres_processor import AnyResProcessor
from vlkit.data.composed_processor import FixedCountProcessor
from vlkit.data.llava_processor import LlavaProcessor
from vlkit.errors import CheckpointError
from vlkit.fusion.pixel_shuffle import PixelShuffleConnector
from vlkit.fusion.projector import LlavaProjector
from vlkit.fusion.qwen_resampler import QwenResampler
from vlkit.hub.hf_config_files import read_json_object
from vlkit.hub.hf_llava_processor import read_llava_processor, save_llava_processor
from vlkit.hub.weights import find_weights, load_into, read_weights, write_json, write_safetensors
from vlkit.models.cogvlm import CogVLM, CogVLMDecoder
from vlkit.models.composition import COMPOSE_KINDS, refresh_composition, set_trainable
from vlkit.models.decoder import DecoderConfig, DecoderLM
from vlkit.models.flamingo import FlamingoVLM
from vlkit.models.frozen_vision import VisionTokens
from vlkit.models.fusion_vlm import FusionVLMConfig
from vlkit.models.llava import LlavaVLM
from vlkit.models.llava_next import AnyResLlavaVLM
from vlkit.models.qformer_vlm import QFormerConnector, QFormerVLM
from vlkit.models.qwen_vl import QwenVLM
from vlkit.models.resnet import ModifiedResNet, ResNetConfig
from vlkit.models.splicing_vlm import SplicingVLM
from vlkit.models.vit import VisionTransformer, ViTConfig

__all__ = [
    "COMPOSED_CONFIG",
    "build_composed",
    "is_composed_directory",
    "load_composed",
    "read_composed_processor",
    "save_composed",
]

COMPOSED_CONFIG = "composed_vlm_config.json"
FORMAT = "vlkit-composed-vlm"


def is_composed_directory(directory: str | Path) -> bool:
    """Whether `directory` holds a composed VLM in vlkit's format."""
    return (Path(directory) / COMPOSED_CONFIG).is_file()


@torch.no_grad()
def _token_shape(vision: VisionTokens, image_size: int) -> tuple[int, int]:
    """(T, Dv) of a tower's tokens, from a dry run in eval mode (BatchNorm statistics kept)."""
    was_training = vision.training
    vision.eval()
    try:
        param = next(vision.parameters())
        tokens = vision(torch.zeros(1, 3, image_size, image_size, dtype=param.dtype))
    finally:
        vision.train(was_training)
    return int(tokens.shape[1]), int(tokens.shape[2])


def _vision_tokens(tower: nn.Module, spec: dict[str, Any]) -> tuple[VisionTokens, int, int]:
    """The tower's token source, with the (count, width) of its tokens."""
    drop_first = bool(spec.get("drop_first", False))
    if isinstance(tower, ModifiedResNet):  # a feature map: "final" or a stage ("layer3")
        vision = VisionTokens(tower, spec.get("source") or "final", drop_first=drop_first)
        return (vision, *_token_shape(vision, tower.config.image_size))
    layers = spec.get("feature_layer")
    source = "final" if layers is None else "hidden:" + ",".join(str(i) for i in layers)
    vision = VisionTokens(tower, source, drop_first=drop_first)
    cfg = tower.config
    count = cfg.grid_size**2 + int(cfg.class_token) - int(drop_first)
    return vision, count, cfg.width * (1 if layers is None else len(layers))


def build_tower(spec: dict[str, Any]) -> nn.Module:
    """A (random) vision tower of the spec's "tower" config (a ViT, or a ModifiedResNet)."""
    config = dict(spec["tower"])
    if config.pop("type", "vit") == "resnet":
        return ModifiedResNet(ResNetConfig(**config))
    return VisionTransformer(ViTConfig(**config))


def _decoder_into(target: DecoderLM, language: DecoderLM) -> None:
    """Copies a plain LM's weights into a Flamingo / CogVLM decoder (whose extra modules keep
    their initialisation)."""
    missing, unexpected = target.load_state_dict(language.state_dict(), strict=False)
    extra = ("gated_cross_attention.", "vision_expert_attn.", "vision_expert_mlp.")
    wrong = [k for k in missing if not any(e in k for e in extra)] + list(unexpected)
    if wrong:
        raise CheckpointError(f"language model weights do not fit the decoder: {wrong[:4]}")


def build_composed(
    spec: dict[str, Any],
    tower: VisionTransformer | None = None,
    language: DecoderLM | None = None,
) -> nn.Module:
    """The composed model of `spec` (the config format above, without "composition").

    Args:
        spec: Kind, vision token choice, decoder config and connector sizes.
        tower: The vision tower to use (pretrained); None builds one from `spec["vision"]["vit"]`.
        language: The LM to use (pretrained, vocabulary already resized); None builds one from
            `spec["decoder"]`. Flamingo and CogVLM copy its weights into their decoders (the
            CogVLM expert starts as a copy of the text weights, as in the paper).

    Raises:
        ValueError: Widths or grids a kind cannot use, naming the option.
    """
    kind = spec["kind"]
    if kind not in COMPOSE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(COMPOSE_KINDS)}, got {kind!r}")
    if tower is None:
        tower = build_tower(spec["vision"])
    dec = DecoderConfig(**spec["decoder"])
    vision, count, width = _vision_tokens(tower, spec["vision"])
    options = spec["connector"]
    image_token_id = int(spec["image_token_id"])
    fusion = None
    if kind not in ("pixel_shuffle", "qwen"):
        fusion = FusionVLMConfig(
            kind=kind, decoder=dec, image_token_id=image_token_id, vision_dim=width,
            num_queries=options["num_queries"], projector=options["projector"],
            qformer_layers=options["qformer_layers"], perceiver_layers=options["perceiver_layers"],
            cross_attention_every=options["cross_attention_every"],
            image_size=tower.config.image_size,
        )  # fmt: skip
    plain = language if language is not None else DecoderLM(dec)
    model: nn.Module
    if kind in ("llava", "cogvlm"):
        try:
            projector = LlavaProjector(width, dec.hidden_size, options["projector"])
        except ValueError as error:
            raise ValueError(
                f"projector={options['projector']!r}: {error} (vision width {width}, "
                f"language hidden_size {dec.hidden_size})"
            ) from None
        anyres = spec.get("anyres")
        if kind == "llava" and anyres:
            model = AnyResLlavaVLM(
                vision, projector, plain, image_token_id, anyres["pinpoints"], fusion
            )
        elif kind == "llava":
            model = LlavaVLM(vision, projector, plain, image_token_id, count, fusion)
        else:
            decoder = CogVLMDecoder(dec)
            if language is not None:
                _decoder_into(decoder, language)
                decoder.copy_text_to_expert()
            model = CogVLM(vision, projector, decoder, image_token_id, count, fusion)
    elif kind == "qformer":
        connector = QFormerConnector(
            width, dec.hidden_size, options["num_queries"], options["qformer_layers"],
            dec.num_heads,
        )  # fmt: skip
        model = QFormerVLM(vision, connector, plain, image_token_id, options["num_queries"], fusion)
        model.bos_token_id = dec.bos_token_id
    elif kind == "flamingo":
        model = FlamingoVLM(
            vision, width, dec, image_token_id, options["num_queries"],
            options["perceiver_layers"], options["cross_attention_every"], fusion,
        )  # fmt: skip
        if language is not None:
            _decoder_into(model.decoder, language)
    elif kind == "qwen":
        try:
            resampler = QwenResampler(dec.hidden_size, options["num_queries"], dec.num_heads, width)
        except ValueError as error:
            raise ValueError(f"num_queries={options['num_queries']}: {error}") from None
        model = QwenVLM(vision, resampler, plain, image_token_id)
    else:
        scale = int(options["scale_factor"])
        side = math.isqrt(count)
        if side * side != count or side % scale:
            raise ValueError(
                f"scale_factor={scale}: pixel shuffle needs a square grid of patch tokens whose "
                f"side is a multiple of it; the tower gives {count} tokens"
            )
        connector = PixelShuffleConnector(width, dec.hidden_size, scale)
        model = SplicingVLM(vision, connector, plain, image_token_id, count // scale**2)
    model.eos_token_id = spec.get("eos_token_id")
    model.pad_token_id = spec.get("pad_token_id")
    model.compose_spec = spec
    return model


def _spec_decoder(model: nn.Module) -> DecoderConfig:
    return model.decoder.config


def save_composed(model: nn.Module, directory: str | Path) -> None:
    """Writes a composed model (not llava: `hf_llava.save_llava`) in vlkit's format, its parts
    record refreshed from the model's current `requires_grad` flags.

    Raises:
        ValueError: `model` was not made by `compose_vlm` / `load_composed`.
    """
    spec = getattr(model, "compose_spec", None)
    if spec is None:
        raise ValueError(
            f"{type(model).__name__}.save_pretrained writes composed models only "
            "(vlkit.compose_vlm or a composed directory)"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    refresh_composition(model, spec["kind"])
    config = {
        "format": FORMAT,
        **spec,
        "decoder": asdict(_spec_decoder(model)),
        "num_image_tokens": model.num_image_tokens,
        "eos_token_id": model.eos_token_id,
        "pad_token_id": model.pad_token_id,
        "composition": model.composition,
    }
    state = model.state_dict()
    if _spec_decoder(model).tie_word_embeddings:
        state.pop("decoder.lm_head.weight", None)  # the embedding, stored once
    write_safetensors(state, directory / "model.safetensors", metadata={"format": "pt"})
    processor = getattr(model, "processor", None)
    if processor is not None:
        save_llava_processor(processor, directory, spec["vision"].get("family", "clip"))
    write_json(config, directory / COMPOSED_CONFIG)


def load_composed(directory: str | Path) -> nn.Module:
    """Loads a directory written by `save_composed` (eval mode; weights only), with its
    `processor`, `composition` and frozen parts as saved.

    Raises:
        CheckpointError: A broken config (naming the file and key) or weights that do not match.
    """
    root = Path(directory)
    path = root / COMPOSED_CONFIG
    config = read_json_object(path)
    if config.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: key 'format' must be {FORMAT!r}, got {config.get('format')!r}"
        )
    composition = config.pop("composition", None) or {}
    config.pop("format")
    config.pop("num_image_tokens", None)  # derived; stored for `read_composed_processor`
    for key in ("kind", "vision", "decoder", "image_token_id", "connector"):
        if key not in config:
            raise CheckpointError(f"{path}: missing key {key!r}")
    try:
        model = build_composed(config)
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: {error}") from error
    weights = find_weights(root, ["model.safetensors"])
    state = read_weights(weights)
    if model.decoder.config.tie_word_embeddings and "decoder.model.embed_tokens.weight" in state:
        state["decoder.lm_head.weight"] = state["decoder.model.embed_tokens.weight"]
    load_into(model, state, str(weights))
    trained = composition.get("trainable_parts")
    if trained is not None:
        set_trainable(model, config["kind"], trained)
    model.composition = composition
    if (root / "tokenizer.json").is_file():
        model.processor = read_composed_processor(
            root, config["kind"], model.num_image_tokens, config.get("anyres")
        )
    return model.eval()


def read_composed_processor(
    directory: str | Path,
    kind: str | None = None,
    count: int | None = None,
    anyres: dict[str, Any] | None = None,
) -> LlavaProcessor:
    """The processor of a composed directory: a `FixedCountProcessor` (the image transform gives
    one size, so every image fills the model's `num_image_tokens` placeholders), or for an anyres
    llava an `AnyResProcessor` (tiles; a count per image).

    Args:
        directory: The composed directory.
        kind, count, anyres: Default: `composed_vlm_config.json`'s "kind", "num_image_tokens"
            and "anyres".

    Raises:
        CheckpointError: Missing or broken processor files or config keys, named.
    """
    root = Path(directory)
    if kind is None or count is None:
        path = root / COMPOSED_CONFIG
        config = read_json_object(path)
        try:
            kind, count = config["kind"], int(config["num_image_tokens"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: missing or bad key {error}") from error
        anyres = config.get("anyres")
    if anyres:
        return AnyResProcessor.from_llava(read_llava_processor(root), anyres["pinpoints"])
    return FixedCountProcessor.from_llava(read_llava_processor(root), count)


def _install() -> None:
    """`save_pretrained` of the composed kinds delegates to `save_composed` (models cannot import
    the format layer); `LlavaVLM` keeps its transformers writer."""
    SplicingVLM.checkpoint_writer = save_composed  # type: ignore[assignment]
    FlamingoVLM.checkpoint_writer = save_composed  # type: ignore[assignment]


_install()
