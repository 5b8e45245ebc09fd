"""A Hugging Face LLaVA `config.json` <-> the structure of vlkit's `LlavaVLM`, both ways.

transformers 5.25's `LlavaConfig` (models/llava/configuration_llava.py): a `vision_config` (a
`CLIPVisionModel` / `SiglipVisionModel`, read by `hf_clip`'s rules), a `text_config` (a Llama /
Qwen2 / Qwen3 / Mistral, read by `hf_causal_lm`), the projector's activation and bias, and which
hidden states feed it: `hidden_states[vision_feature_layer]` (an int, or a list concatenated along
the width), token 0 dropped for `vision_feature_select_strategy="default"`:
`VisionTokens(tower, "hidden:-2", drop_first=True)` (`vlkit.models.frozen_vision`). The weights
and directories are `hf_llava`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.errors import CheckpointError
from vlkit.fusion.projector import PROJECTOR_ACTIVATIONS, LlavaProjector
from vlkit.hub.hf_causal_lm import (
    CAUSAL_LM_DEFAULTS,
    CAUSAL_LM_MODEL_TYPES,
    causal_lm_config,
    causal_lm_config_to_hf,
)
from vlkit.hub.hf_clip import config_from_hf
from vlkit.hub.hf_config_files import config_model_type
from vlkit.models.decoder import DecoderConfig, DecoderLM
from vlkit.models.frozen_vision import VisionTokens, hidden_layers
from vlkit.models.fusion_vlm import FusionVLMConfig
from vlkit.models.llava import LlavaVLM
from vlkit.models.vit import VisionTransformer, ViTConfig

__all__ = [
    "LLAVA_MODEL_TYPES",
    "LLAVA_TEXT_MODEL_TYPES",
    "LLAVA_VISION_MODEL_TYPES",
    "build_llava",
    "is_llava_directory",
    "llava_config_to_hf",
    "llava_tower",
    "vision_family",
]

LLAVA_MODEL_TYPES = ("llava",)
# vision_config.model_type -> the hf_clip family whose rules convert the tower.
LLAVA_VISION_MODEL_TYPES = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}
LLAVA_TEXT_MODEL_TYPES = CAUSAL_LM_MODEL_TYPES  # llama, qwen2, qwen3, mistral (`hf_causal_lm`)
# LlavaConfig's vision_config when config.json has none (configuration_llava.py).
_DEFAULT_VISION = dict(model_type="clip_vision_model", intermediate_size=4096, hidden_size=1024,
                       patch_size=14, image_size=336, num_hidden_layers=24, num_attention_heads=16)  # fmt: skip
# LlamaConfig defaults for keys a text_config may omit (configuration_llama.py).
_LLAMA_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, rms_norm_eps=1e-6,
                       max_position_embeddings=2048)  # fmt: skip


def is_llava_directory(directory: str | Path) -> bool:
    """Whether `directory` has a `config.json` with model_type "llava" (False when unreadable)."""
    return config_model_type(directory) in LLAVA_MODEL_TYPES


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
    defaults = {**_LLAMA_DEFAULTS, **CAUSAL_LM_DEFAULTS.get(model_type, {})}  # Mistral's differ
    text = {**defaults, "model_type": model_type, **text, "tie_word_embeddings": tied}
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


def vision_family(tower: VisionTransformer) -> str:
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


def llava_tower(model: LlavaVLM) -> VisionTransformer:
    """The ViT under a LLaVA's `VisionTokens` (what transformers can write)."""
    vision = model.vision
    tower = getattr(vision, "tower", vision)
    if not isinstance(vision, VisionTokens) or not isinstance(tower, VisionTransformer):
        raise CheckpointError(
            "cannot write a transformers LLaVA: the vision module must be a VisionTokens over a "
            f"VisionTransformer, got {type(vision).__name__}"
        )
    return tower


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


def _text_config_to_hf(config: DecoderConfig, model_type: str | None = None) -> dict[str, Any]:
    """The `text_config` of a decoder: `hf_causal_lm`'s config.json without the causal-LM
    `architectures` (a LLaVA's language model is the bare `*Model`); `model_type` keeps the
    family of a loaded checkpoint (Mistral is written as Mistral)."""
    try:
        text = causal_lm_config_to_hf(config, model_type)
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
    tower = llava_tower(model)
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
    family = vision_family(tower)
    vision_hf = {
        **(base.get("vision_config") or {}),
        **_vision_config_to_hf(tower.config, family, tower.attention_pool is not None),
    }
    text_base = base.get("text_config") or {}
    decoder = model.decoder.config
    text_hf = {**_text_config_to_hf(decoder, text_base.get("model_type")), **text_base}
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
