"""open_clip checkpoints (a state dict + open_clip's model config) -> vlkit `CLIP`.

Supports open_clip's built-in ViT and ModifiedResNet towers (`open_clip/model.py`,
`transformer.py`, `modified_resnet.py`); timm or Hugging Face towers and the custom attention
blocks have no vlkit equivalent and raise an error naming the option.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from vlkit.data.preprocess_config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PreprocessConfig
from vlkit.errors import CheckpointError
from vlkit.models.clip import CLIPConfig
from vlkit.models.resnet import ResNetConfig
from vlkit.models.text import TextConfig
from vlkit.models.vit import ViTConfig
from vlkit.overrides import JsonField, check_json_fields

# Keys that old OpenAI-converted state dicts carry but that are not weights.
_IGNORED = {"input_resolution", "context_length", "vocab_size", "attn_mask", "visual.attn_mask"}

# open_clip option -> its default (open_clip/model.py CLIPVisionCfg / CLIPTextCfg), or a tuple of
# the values vlkit accepts; any other value has no vlkit equivalent.
_UNSUPPORTED_VISION = {
    "timm_model_name": None, "ls_init_value": None, "attentional_pool": False,
    "pos_embed_type": "learnable", "pool_type": "tok", "qk_norm": False,
    "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
    "scale_attn": False, "scale_fc": False, "block_type": (None, "default"),
}  # fmt: skip
_UNSUPPORTED_TEXT = {
    "hf_model_name": None, "ls_init_value": None, "embed_cls": False, "proj_type": "linear",
    "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
    "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
    "block_type": (None, "default"), "pool_type": ("argmax", "last", "eos"),
}  # fmt: skip
# What the most common unsupported options are, for the error message.
_MEANING = {
    "timm_model_name": "a timm image tower",
    "hf_model_name": "a Hugging Face text tower, e.g. the XLM-R / RoBERTa / mT5 / NLLB CLIPs",
    "attentional_pool": "CoCa's attentional pooler",
    "embed_cls": "CoCa's text CLS embedding",
    "ls_init_value": "LayerScale",
}
# The numbers `config_from_open_clip` reads (open_clip/model.py CLIPVisionCfg / CLIPTextCfg),
# checked key by key so that a "64" or a null names its key rather than failing in int().
# `image_size` and vision `layers` may also be lists (non-square sizes, a ResNet): read below.
_SIZE = JsonField(int, 1)
_OPEN_CLIP_SCHEMA: dict[str, Any] = {
    "embed_dim": _SIZE,
    "quick_gelu": JsonField(bool),
    "init_logit_bias": JsonField(float, nullable=True),
    "vision_cfg": {
        # patch_size is null in the ModifiedResNet configs (RN50, ...); a ViT needs it (below).
        "width": _SIZE, "head_width": _SIZE, "patch_size": JsonField(int, 1, nullable=True),
        "mlp_ratio": JsonField(float, 0, low_open=True), "no_ln_pre": JsonField(bool),
    },
    "text_cfg": {
        "context_length": _SIZE, "vocab_size": _SIZE, "width": _SIZE, "heads": _SIZE,
        "layers": _SIZE, "mlp_ratio": JsonField(float, 0, low_open=True),
        "no_causal_mask": JsonField(bool), "proj_bias": JsonField(bool),
        "eos_id": JsonField(int, 0), "pad_id": JsonField(int, 0),
    },
}  # fmt: skip
# GELU keyword arguments (`act_kwargs`) -> vlkit activation; open_clip passes them to nn.GELU.
_GELU_VARIANTS = {"tanh": "gelu_pytorch_tanh", "none": "gelu"}

_BLOCK_RULES = [
    (r"resblocks\.(\d+)\.ln_1\.", r"blocks.\1.norm1."),
    (r"resblocks\.(\d+)\.ln_2\.", r"blocks.\1.norm2."),
    (r"resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", r"blocks.\1.attention.qkv.\2"),
    (r"resblocks\.(\d+)\.attn\.out_proj\.", r"blocks.\1.attention.out_proj."),
    (r"resblocks\.(\d+)\.mlp\.c_fc\.", r"blocks.\1.mlp.fc1."),
    (r"resblocks\.(\d+)\.mlp\.c_proj\.", r"blocks.\1.mlp.fc2."),
]
_VIT_RULES = [
    (r"^visual\.conv1\.", "vision.patch_embed."),
    (r"^visual\.class_embedding$", "vision.class_token"),
    (r"^visual\.positional_embedding$", "vision.position_embedding"),
    (r"^visual\.ln_pre\.", "vision.norm_pre."),
    (r"^visual\.ln_post\.", "vision.norm_post."),
    (r"^visual\.proj$", "image_projection.weight"),
    (r"^visual\.transformer\.", "vision.transformer."),
]
_TEXT_RULES = [
    (r"^token_embedding\.", "text.token_embedding."),
    (r"^positional_embedding$", "text.position_embedding"),
    (r"^ln_final\.", "text.norm_final."),
    (r"^text_projection$", "text_projection.weight"),
    (r"^transformer\.", "text.transformer."),
]
# Stored as (in, out) matrices used as x @ proj; nn.Linear keeps (out, in).
_TRANSPOSED = {"visual.proj", "text_projection"}


def _check_supported(model_cfg: dict[str, Any]) -> None:
    """Raises one error naming every option of `model_cfg` that vlkit cannot reproduce."""
    found = []
    if model_cfg.get("multimodal_cfg"):
        found.append("multimodal_cfg (CoCa's text decoder)")
    for where, unsupported in (
        ("vision_cfg", _UNSUPPORTED_VISION),
        ("text_cfg", _UNSUPPORTED_TEXT),
    ):
        section = model_cfg.get(where) or {}
        if not isinstance(section, dict):
            continue  # the field check after this one names the wrong type
        for option, accepted in unsupported.items():
            accepted = accepted if isinstance(accepted, tuple) else (accepted,)
            value = section.get(option, accepted[0])
            if value not in accepted:
                meaning = f" ({_MEANING[option]})" if option in _MEANING else ""
                found.append(f"{where}.{option}={value!r}{meaning}")
        act_kwargs = section.get("act_kwargs") or {}
        if act_kwargs and (
            model_cfg.get("quick_gelu") or set(act_kwargs) != {"approximate"}
            or act_kwargs["approximate"] not in _GELU_VARIANTS
        ):  # fmt: skip
            found.append(f"{where}.act_kwargs={act_kwargs!r}")
    if found:
        raise CheckpointError(
            "open_clip config options not supported by vlkit: " + "; ".join(found)
        )


def _activation(model_cfg: dict[str, Any], section: dict[str, Any]) -> str:
    """A tower's activation: QuickGELU, or nn.GELU with the tower's `act_kwargs`."""
    if model_cfg.get("quick_gelu", False):
        return "quick_gelu"
    return _GELU_VARIANTS[(section.get("act_kwargs") or {}).get("approximate", "none")]


def _norm_eps(section: dict[str, Any]) -> float:
    return float((section.get("norm_kwargs") or {}).get("eps", 1e-5))


def _open_clip_stats(value: Any, default: tuple, key: str) -> tuple[float, ...]:
    # open_clip `image_transform`: a falsy value takes the default, a scalar fills 3 channels.
    if not value:
        return default
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * 3
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if len(values) != 3 or not numbers:
        raise CheckpointError(
            f"open_clip preprocess_cfg.{key} must be a number or 3 numbers, got {value!r}"
        )
    return tuple(float(v) for v in values)


def preprocess_from_open_clip(image_size: int, preprocess_cfg: dict | None) -> PreprocessConfig:
    """open_clip's `PreprocessCfg` (open_clip/transform.py) as a `PreprocessConfig`.

    Every key open_clip reads is honoured: `mean`, `std`, `interpolation` ("bicubic",
    "bilinear", "random" = bicubic at eval time), `resize_mode` ("shortest", "longest",
    "squash"), `fill_color` (the letterbox padding), `mode` (only "RGB", as open_clip asserts);
    `size` is replaced by the vision tower's `image_size`, as open_clip's `create_model` does.
    Unknown keys are dropped, as open_clip's `merge_preprocess_dict` drops them.

    Raises:
        CheckpointError: A value open_clip would reject; the message names the key.
    """
    cfg = {k: v for k, v in (preprocess_cfg or {}).items() if v is not None}
    resize_mode = cfg.get("resize_mode") or "shortest"
    if resize_mode not in ("shortest", "longest", "squash"):
        raise CheckpointError(
            f"open_clip preprocess_cfg 'resize_mode' must be shortest, longest or squash; "
            f"got {resize_mode!r}"
        )
    interpolation = cfg.get("interpolation") or "bicubic"
    if interpolation not in ("bicubic", "bilinear", "random"):
        raise CheckpointError(
            f"open_clip preprocess_cfg 'interpolation' must be bicubic, bilinear or random; "
            f"got {interpolation!r}"
        )
    if cfg.get("mode", "RGB") != "RGB":
        raise CheckpointError(f"open_clip preprocess_cfg 'mode' must be 'RGB', got {cfg['mode']!r}")
    fill = cfg.get("fill_color", 0)
    if isinstance(fill, bool) or not isinstance(fill, int):
        raise CheckpointError(f"open_clip preprocess_cfg 'fill_color' must be an int, got {fill!r}")
    return PreprocessConfig(
        image_size=image_size,
        resize_mode=resize_mode,
        interpolation=interpolation,
        mean=_open_clip_stats(cfg.get("mean"), OPENAI_CLIP_MEAN, "mean"),
        std=_open_clip_stats(cfg.get("std"), OPENAI_CLIP_STD, "std"),
        fill_color=fill,
        pipeline="open_clip",
    )


def config_from_open_clip(
    model_cfg: dict[str, Any], preprocess_cfg: dict | None = None
) -> CLIPConfig:
    """Translates an open_clip model config (`model_configs/*.json` or `open_clip_config.json`'s
    `model_cfg`) into a CLIPConfig."""
    # Options vlkit lacks are named first: a timm or HF tower legitimately leaves fields such
    # as vision_cfg.patch_size null, which the field check below would misreport.
    _check_supported(model_cfg)
    check_json_fields(model_cfg, _OPEN_CLIP_SCHEMA, "open_clip model_cfg")
    vision = dict(model_cfg.get("vision_cfg") or {})
    text = dict(model_cfg.get("text_cfg") or {})
    if "embed_dim" not in model_cfg:
        raise CheckpointError("open_clip model_cfg needs 'embed_dim'")
    embed_dim = int(model_cfg["embed_dim"])
    image_size = vision.get("image_size", 224)
    if isinstance(image_size, (list, tuple)):
        if len(set(image_size)) != 1:
            raise CheckpointError(f"non-square open_clip image_size {image_size} is not supported")
        image_size = image_size[0]
    layers = vision.get("layers", 12)
    width = int(vision.get("width", 768))
    head_width = int(vision.get("head_width", 64))
    text_heads = int(text.get("heads", 8))
    if int(text.get("width", 512)) % text_heads:
        raise CheckpointError(f"open_clip text_cfg.heads must divide text_cfg.width="
                              f"{text.get('width', 512)}, got {text_heads}")  # fmt: skip
    if isinstance(layers, (list, tuple)):
        vision_config = ResNetConfig(
            image_size=image_size, layers=tuple(layers), width=width,
            heads=width * 32 // head_width, output_dim=embed_dim,
        )  # fmt: skip
    else:
        # open_clip's ViT has width // head_width heads, which must divide width.
        if width % max(1, width // head_width):
            raise CheckpointError(f"open_clip vision_cfg.head_width={head_width} gives "
                                  f"{width // head_width} heads, which do not divide "
                                  f"vision_cfg.width={width}")  # fmt: skip
        if vision.get("patch_size", 16) is None:
            raise CheckpointError("open_clip vision_cfg.patch_size must be an int for a ViT "
                                  "(vision_cfg.layers an int), got null")  # fmt: skip
        vision_config = ViTConfig(
            image_size=image_size, patch_size=int(vision.get("patch_size", 16)), width=width,
            layers=int(layers), heads=width // head_width,
            mlp_dim=int(width * vision.get("mlp_ratio", 4.0)),
            activation=_activation(model_cfg, vision),
            layer_norm_eps=_norm_eps(vision), pre_norm=not vision.get("no_ln_pre", False),
        )  # fmt: skip
    pool_type = text.get("pool_type", "argmax")
    text_width = int(text.get("width", 512))
    text_config = TextConfig(
        vocab_size=int(text.get("vocab_size", 49408)),
        context_length=int(text.get("context_length", 77)),
        width=text_width,
        layers=int(text.get("layers", 12)),
        heads=int(text.get("heads", 8)),
        mlp_dim=int(text_width * text.get("mlp_ratio", 4.0)),
        activation=_activation(model_cfg, text),
        layer_norm_eps=_norm_eps(text),
        causal=not text.get("no_causal_mask", False),
        pooling=pool_type,
        # open_clip's CLIPTextCfg defaults eos_id to 2, which only "eos" pooling reads.
        eos_token_id=int(text.get("eos_id", 2 if pool_type == "eos" else 49407)),
        pad_token_id=int(text.get("pad_id", 0)),
    )
    preprocess = preprocess_from_open_clip(image_size, preprocess_cfg)
    bias = model_cfg.get("init_logit_bias")
    return CLIPConfig(
        vision=vision_config,
        text=text_config,
        embed_dim=embed_dim,
        vision_projection=isinstance(vision_config, ViTConfig),
        text_projection_bias=bool(text.get("proj_bias", False)),
        init_logit_bias=None if bias is None else float(bias),
        preprocess=preprocess,
    )


def from_open_clip_state_dict(
    state: dict[str, torch.Tensor], config: CLIPConfig
) -> dict[str, torch.Tensor]:
    """Renames open_clip keys to vlkit keys (dropping a DDP `module.` prefix and non-weights)."""
    resnet = isinstance(config.vision, ResNetConfig)
    out = {}
    for key, value in state.items():
        # `CustomTextCLIP` (model_cfg "custom_text") keeps its text tower under `text.`; `CLIP`
        # stores the same tensors at the top level (open_clip/model.py).
        key = key.removeprefix("module.").removeprefix("text.")
        if key in _IGNORED:
            continue
        if key in _TRANSPOSED:
            value = value.T
        if resnet and key.startswith("visual."):
            new = "vision." + key.removeprefix("visual.")
        else:
            new = key
            for pattern, replacement in _VIT_RULES + _TEXT_RULES:
                new = re.sub(pattern, replacement, new)
        for pattern, replacement in _BLOCK_RULES:
            new = re.sub(pattern, replacement, new)
        out[new] = value
    return out


def read_open_clip_config(source: str | Path | dict[str, Any]) -> tuple[dict, dict | None]:
    """Returns (model_cfg, preprocess_cfg) from a dict or JSON file in either of open_clip's
    layouts: a bare model config, or the hub's `open_clip_config.json` with `model_cfg`."""
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"open_clip config not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if "model_cfg" in data:
        return data["model_cfg"], data.get("preprocess_cfg")
    if "embed_dim" not in data:
        raise CheckpointError("open_clip config needs 'embed_dim' (or a 'model_cfg' section)")
    return data, None


OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
