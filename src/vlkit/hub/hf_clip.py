"""Hugging Face `CLIPModel` / `SiglipModel` directories <-> vlkit `CLIP` / `SigLIP`.

Key names follow transformers' models/clip/modeling_clip.py and models/siglip/modeling_siglip.py.
vlkit fuses each attention's q/k/v projections into one `qkv` linear; the conversion concatenates
them on load and splits them on save.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from vlkit.data.preprocess_config import SIGLIP_MEAN, SIGLIP_STD, PreprocessConfig
from vlkit.errors import CheckpointError
from vlkit.hub.hf_config_checks import check_hf_clip_config, check_hf_clip_tower
from vlkit.hub.weights import state_dict_problems
from vlkit.models.clip import CLIP, CLIPConfig
from vlkit.models.resnet import ResNetConfig
from vlkit.models.text import TextConfig
from vlkit.models.vit import ViTConfig

# Buffers that some Hugging Face checkpoints store but that carry no learned state.
_IGNORED_HF_KEYS = re.compile(r".*\.position_ids$")

# vlkit key -> Hugging Face key. Applied in order; `{tower}` is text_model or vision_model.
_BLOCK_RULES = [
    (r"transformer\.blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"transformer\.blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (
        r"transformer\.blocks\.(\d+)\.attention\.out_proj\.",
        r"encoder.layers.\1.self_attn.out_proj.",
    ),
    (r"transformer\.blocks\.(\d+)\.attention\.qkv\.", r"encoder.layers.\1.self_attn.QKV."),
    (r"transformer\.blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
]
_VISION_RULES = [
    (r"^patch_embed\.", "embeddings.patch_embedding."),
    (r"^class_token$", "embeddings.class_embedding"),
    (r"^position_embedding$", "embeddings.position_embedding.weight"),
    (r"^norm_pre\.", "pre_layrnorm."),
    (r"^norm_post\.", "post_layernorm."),
    (r"^attention_pool\.in_proj\.(weight|bias)$", r"head.attention.in_proj_\1"),
    (r"^attention_pool\.out_proj\.", "head.attention.out_proj."),
    (r"^attention_pool\.norm\.", "head.layernorm."),
    (r"^attention_pool\.", "head."),
    *_BLOCK_RULES,
]
_TEXT_RULES = [
    (r"^token_embedding\.", "embeddings.token_embedding."),
    (r"^position_embedding$", "embeddings.position_embedding.weight"),
    (r"^norm_final\.", "final_layer_norm."),
    *_BLOCK_RULES,
]


def _hf_key(key: str, model_type: str) -> str:
    tower, _, rest = key.partition(".")
    if tower in ("vision", "text"):
        for pattern, replacement in _VISION_RULES if tower == "vision" else _TEXT_RULES:
            rest = re.sub(pattern, replacement, rest)
        return f"{tower}_model.{rest}"
    if key.startswith("image_projection."):
        return key.replace("image_projection.", "visual_projection.")
    if key.startswith("text_projection.") and model_type == "siglip":
        return key.replace("text_projection.", "text_model.head.")
    return key  # logit_scale, logit_bias, text_projection (CLIP)


def to_hf_state_dict(state: dict[str, torch.Tensor], config: CLIPConfig) -> dict[str, torch.Tensor]:
    """vlkit state dict -> Hugging Face state dict (q/k/v split, scalar shapes as HF stores them)."""
    out = {}
    for key, value in state.items():
        hf_key = _hf_key(key, config.model_type)
        if ".QKV." in hf_key:
            for name, part in zip(
                ("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True
            ):
                out[hf_key.replace("QKV", name)] = part
        elif key in ("logit_scale", "logit_bias") and config.model_type == "siglip":
            out[key] = value.reshape(1)  # SiglipModel stores these with shape (1,)
        else:
            out[hf_key] = value
    return out


def from_hf_state_dict(
    hf_state: dict[str, torch.Tensor], model: CLIP, source: str
) -> dict[str, torch.Tensor]:
    """Hugging Face state dict -> vlkit state dict, checked key by key in Hugging Face names."""
    ours = model.state_dict()
    expected = to_hf_state_dict(ours, model.config)
    present = {k: v for k, v in hf_state.items() if not _IGNORED_HF_KEYS.match(k)}
    problems = state_dict_problems(expected, present, "config")
    if problems:
        raise CheckpointError(f"{source} does not match its config: " + "; ".join(problems))
    state = {}
    for key, value in ours.items():
        hf_key = _hf_key(key, model.config.model_type)
        if ".QKV." in hf_key:
            parts = [present[hf_key.replace("QKV", n)] for n in ("q_proj", "k_proj", "v_proj")]
            state[key] = torch.cat(parts, dim=0)
        else:
            state[key] = present[hf_key].reshape(value.shape)
    return state


# Defaults of transformers' CLIPTextConfig / CLIPVisionConfig / Siglip*Config, for config.json
# files that omit keys.
_HF_DEFAULTS = {
    "clip": {
        "text": dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                     num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                     layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=49406, eos_token_id=49407),
        "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                       hidden_act="quick_gelu", layer_norm_eps=1e-5),
    },
    "siglip": {
        "text": dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=64,
                     hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, pad_token_id=1,
                     bos_token_id=49406, eos_token_id=49407),
        "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, num_channels=3, image_size=224, patch_size=16,
                       hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=True),
    },
}  # fmt: skip
HF_CLIP_MODEL_TYPES = tuple(_HF_DEFAULTS)  # clip, siglip


# The transformer-encoder keys both towers' Hugging Face configs share: HF key -> vlkit field of
# `TextConfig` / `ViTConfig`. Read by `config_from_hf`, written by `config_to_hf`.
_HF_ENCODER_FIELDS = {
    "hidden_size": "width",
    "intermediate_size": "mlp_dim",
    "num_hidden_layers": "layers",
    "num_attention_heads": "heads",
    "hidden_act": "activation",
    "layer_norm_eps": "layer_norm_eps",
}


def _encoder_from_hf(tower: dict[str, Any]) -> dict[str, Any]:
    """vlkit encoder fields of a Hugging Face `text_config` / `vision_config` (defaults filled)."""
    fields = {ours: tower[theirs] for theirs, ours in _HF_ENCODER_FIELDS.items()}
    return {**fields, "attention_dropout": float(tower.get("attention_dropout", 0.0))}


def _encoder_to_hf(tower: TextConfig | ViTConfig) -> dict[str, Any]:
    """The Hugging Face encoder keys of a vlkit text or vision tower config."""
    fields = {theirs: getattr(tower, ours) for theirs, ours in _HF_ENCODER_FIELDS.items()}
    return {**fields, "attention_dropout": tower.attention_dropout}


def config_from_hf(hf: dict[str, Any], source: str) -> CLIPConfig:
    """Translates a Hugging Face `config.json` (model_type clip or siglip) into a CLIPConfig."""
    check_hf_clip_config(hf, source)  # types and ranges, key by key, naming the file (H7)
    model_type = hf.get("model_type")
    if model_type not in _HF_DEFAULTS:
        raise CheckpointError(
            f"{source}: unsupported model_type {model_type!r} "
            f"(supported: {', '.join(HF_CLIP_MODEL_TYPES)})"
        )
    text = {**_HF_DEFAULTS[model_type]["text"], **(hf.get("text_config") or {})}
    vision = {**_HF_DEFAULTS[model_type]["vision"], **(hf.get("vision_config") or {})}
    check_hf_clip_tower(text, source, "text_config")
    check_hf_clip_tower(vision, source, "vision_config")
    siglip = model_type == "siglip"
    if siglip and not vision.get("vision_use_head", True):
        raise CheckpointError(f"{source}: SigLIP without a vision head has no image embedding")
    if siglip:
        pooling = "last"
    else:
        # transformers (modeling_clip.py): configs whose eos_token_id is 2 predate PR #24773 and
        # pool at argmax(input_ids); newer ones pool at the first eos_token_id.
        pooling = "argmax" if text["eos_token_id"] == 2 else "eos"
    text_config = TextConfig(
        vocab_size=text["vocab_size"],
        context_length=text["max_position_embeddings"],
        **_encoder_from_hf(text),
        causal=not siglip,
        pooling=pooling,
        # Argmax pooling relies on end-of-text being the largest id (49407 in CLIP's vocabulary).
        eos_token_id=text["vocab_size"] - 1 if pooling == "argmax" else text["eos_token_id"],
        pad_token_id=text["pad_token_id"] if text["pad_token_id"] is not None else 0,
    )
    vision_config = ViTConfig(
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        **_encoder_from_hf(vision),
        class_token=not siglip,
        patch_bias=siglip,
        pre_norm=not siglip,
        pool="map" if siglip else "cls",
        num_channels=vision["num_channels"],
    )
    if siglip:
        embed_dim = text.get("projection_size") or text["hidden_size"]
        return CLIPConfig(
            model_type="siglip", vision=vision_config, text=text_config, embed_dim=embed_dim,
            vision_projection=False, text_projection_bias=True, init_logit_scale=math.log(10.0),
            init_logit_bias=-10.0, max_logit_scale=None,
            preprocess=PreprocessConfig(image_size=vision_config.image_size, resize_mode="squash",
                                        mean=SIGLIP_MEAN, std=SIGLIP_STD, center_crop=False,
                                        crop_rounding="floor", pipeline="transformers"),
        )  # fmt: skip
    return CLIPConfig(
        vision=vision_config,
        text=text_config,
        embed_dim=hf.get("projection_dim", 512),
        init_logit_scale=hf.get("logit_scale_init_value", 2.6592),
        preprocess=PreprocessConfig(
            image_size=vision_config.image_size, crop_rounding="floor", pipeline="transformers"
        ),
    )


def hf_format_problem(config: CLIPConfig) -> str | None:
    """Why `config` has no Hugging Face equivalent, or None when it has one."""
    vision, text = config.vision, config.text
    if isinstance(vision, ResNetConfig):
        return "transformers has no CLIP ResNet image tower"
    siglip = config.model_type == "siglip"
    wanted = {
        "vision.class_token": (vision.class_token, not siglip),
        "vision.patch_bias": (vision.patch_bias, siglip),
        "vision.pre_norm": (vision.pre_norm, not siglip),
        "vision.pool": (vision.pool, "map" if siglip else "cls"),
        "text.causal": (text.causal, not siglip),
        "vision_projection": (config.vision_projection, not siglip),
        "text_projection_bias": (config.text_projection_bias, siglip),
    }
    if siglip:
        wanted["text.pooling"] = (text.pooling, "last")
        wanted["embed_dim"] = (config.embed_dim, vision.width)
    elif text.pooling == "last":
        wanted["text.pooling"] = (text.pooling, "eos or argmax")
    for name, (value, needed) in wanted.items():
        if value != needed:
            return f"{name}={value!r} but Hugging Face {config.model_type} needs {needed!r}"
    return None


def config_to_hf(config: CLIPConfig) -> dict[str, Any]:
    """The Hugging Face `config.json` of `config` (see `hf_format_problem` for what can't be)."""
    problem = hf_format_problem(config)
    if problem:
        raise CheckpointError(f"cannot write Hugging Face format: {problem}")
    text, vision = config.text, config.vision
    siglip = config.model_type == "siglip"
    text_hf = {
        "vocab_size": text.vocab_size,
        **_encoder_to_hf(text),
        "max_position_embeddings": text.context_length,
        "pad_token_id": text.pad_token_id,
        "bos_token_id": 49406,
        # HF CLIP pools at argmax(input_ids) exactly when eos_token_id == 2.
        "eos_token_id": 2 if text.pooling == "argmax" else text.eos_token_id,
        "model_type": "siglip_text_model" if siglip else "clip_text_model",
    }
    vision_hf = {
        **_encoder_to_hf(vision),
        "num_channels": vision.num_channels,
        "image_size": vision.image_size,
        "patch_size": vision.patch_size,
        "model_type": "siglip_vision_model" if siglip else "clip_vision_model",
    }
    if siglip:
        text_hf["projection_size"] = config.embed_dim
        vision_hf["vision_use_head"] = True
        return {"architectures": ["SiglipModel"], "model_type": "siglip",
                "text_config": text_hf, "vision_config": vision_hf}  # fmt: skip
    text_hf["projection_dim"] = vision_hf["projection_dim"] = config.embed_dim
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": config.init_logit_scale,
        "text_config": text_hf,
        "vision_config": vision_hf,
    }
