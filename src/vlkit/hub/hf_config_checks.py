"""The keys of a Hugging Face CLIP / SigLIP `config.json`, checked before they are translated.

A hand-edited or truncated `config.json` (a hidden size written as "64", `projection_dim: null`,
`vision_config` a list) otherwise fails deep inside model construction with a TypeError about
tensor sizes; `check_hf_clip_config` names the file and the key's path instead. The keys and
their ranges are those transformers' `CLIPTextConfig` / `CLIPVisionConfig` / `Siglip*Config`
document (configuration_clip.py, configuration_siglip.py); keys it does not list are ignored, as
`config_from_hf` ignores them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlkit.layers.activations import ACTIVATIONS
from vlkit.overrides import ConfigError, JsonField, check_json_fields

__all__ = ["HF_CLIP_CONFIG_SCHEMA", "check_hf_clip_config", "check_hf_clip_tower"]

_SIZE = JsonField(int, 1)  # a width, a depth, a count: at least 1
_TOKEN_ID = JsonField(int, 0, nullable=True)

# Both towers' transformer-encoder keys (`_HF_ENCODER_FIELDS` in hf_clip.py).
_ENCODER = {
    "hidden_size": _SIZE,
    "intermediate_size": _SIZE,
    "num_hidden_layers": _SIZE,
    "num_attention_heads": _SIZE,
    "hidden_act": JsonField(str),
    "layer_norm_eps": JsonField(float, 0, low_open=True),
    "attention_dropout": JsonField(float, 0),
}

HF_CLIP_CONFIG_SCHEMA: dict[str, Any] = {
    "model_type": JsonField(str),
    "projection_dim": _SIZE,
    "logit_scale_init_value": JsonField(float),
    "text_config": {
        **_ENCODER,
        "vocab_size": _SIZE,
        "max_position_embeddings": _SIZE,
        "pad_token_id": _TOKEN_ID,
        "bos_token_id": _TOKEN_ID,
        "eos_token_id": JsonField(int, 0),
        "projection_size": JsonField(int, 1, nullable=True),
    },
    "vision_config": {
        **_ENCODER,
        "num_channels": _SIZE,
        "image_size": _SIZE,
        "patch_size": _SIZE,
        "vision_use_head": JsonField(bool),
    },
}


def check_hf_clip_config(hf: Any, source: str) -> None:
    """Checks a parsed CLIP / SigLIP `config.json` key by key (see the module docstring).

    Raises:
        vlkit.overrides.ConfigError: Naming `source` and the key's path, e.g.
            `config.json: vision_config.hidden_size must be an int, got "64"`.
    """
    check_json_fields(hf, HF_CLIP_CONFIG_SCHEMA, source)


def check_hf_clip_tower(tower: Mapping[str, Any], source: str, name: str) -> None:
    """Checks what no single key's schema can: one `text_config` / `vision_config` with its
    defaults filled in (`name` is that key). Otherwise a head count that does not divide the
    width, or an activation vlkit lacks, fails while the model is built, naming neither the
    file nor the key ("width 64 is not divisible by the number of heads 5").

    Raises:
        vlkit.overrides.ConfigError: e.g. `config.json: vision_config.num_attention_heads must
            divide vision_config.hidden_size=64, got 5`.
    """
    hidden, heads = tower.get("hidden_size"), tower.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads:
        raise ConfigError(
            f"{source}: {name}.num_attention_heads must divide {name}.hidden_size={hidden}, "
            f"got {heads}"
        )
    act = tower.get("hidden_act")
    if act is not None and act not in ACTIVATIONS:
        raise ConfigError(
            f"{source}: {name}.hidden_act must be one of {', '.join(ACTIVATIONS)}, got {act!r}"
        )
    patch, size = tower.get("patch_size"), tower.get("image_size")
    if isinstance(patch, int) and isinstance(size, int) and patch > size:
        raise ConfigError(
            f"{source}: {name}.patch_size must be <= {name}.image_size={size}, got {patch}"
        )
