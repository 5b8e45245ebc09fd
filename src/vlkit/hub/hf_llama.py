"""Hugging Face Llama checkpoints (`LlamaForCausalLM`, `LlamaModel`) <-> vlkit's `DecoderLM`.

`DecoderLM` keeps HF's parameter names (`model.layers.N.self_attn.q_proj.weight`, ...), so the
conversion is a near-identity mapping: strip a prefix, drop the RoPE `inv_freq` buffers, tie the
LM head when the config says so. Used for SmolVLM / Idefics3 text models (`hf_smolvlm`) and,
with the Qwen2 / Qwen3 knobs, for standalone causal LMs (`hf_causal_lm`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from vlkit.models.decoder import DecoderConfig, DecoderLM

__all__ = ["config_from_hf_llama", "from_hf_llama_state_dict", "rope_from_hf"]


# The rope parameters each supported `rope_type` reads (transformers' `modeling_rope_utils.py`).
_ROPE_KEYS = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
}


def rope_from_hf(
    hf_config: Mapping[str, Any], source: str = "config.json"
) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling or None) of a HF config, in its v4 (`rope_theta` +
    `rope_scaling`) or v5 (`rope_parameters`) layout.

    Raises:
        ValueError: A `rope_type` vlkit does not implement, or a missing scaling key (one line
            naming `source` and the key).
    """
    rope = dict(hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    key = "rope_parameters" if hf_config.get("rope_parameters") else "rope_scaling"
    if rope_type not in _ROPE_KEYS:
        raise ValueError(
            f"{source}: {key}.rope_type {rope_type!r} is not supported "
            f"(supported: {', '.join(_ROPE_KEYS)})"
        )
    theta = float(rope.get("rope_theta") or hf_config.get("rope_theta") or 10000.0)
    if rope_type == "default":
        return theta, None
    for name in _ROPE_KEYS[rope_type]:
        if name not in rope:
            raise ValueError(f"{source}: {key} has rope_type {rope_type!r} but no {name!r}")
    scaling = {
        "rope_type": rope_type,
        **{name: float(rope[name]) for name in _ROPE_KEYS[rope_type]},
    }
    if rope_type == "llama3":
        original = rope.get("original_max_position_embeddings")
        original = original or hf_config.get("max_position_embeddings", 2048)
        scaling["original_max_position_embeddings"] = int(original)
    return theta, scaling


def config_from_hf_llama(
    hf_config: Mapping[str, Any], source: str = "config.json", **overrides: Any
) -> DecoderConfig:
    """Build a `DecoderConfig` from a Hugging Face `LlamaConfig` dict (`config.json` / `to_dict()`).

    Args:
        source: Names the file in error messages.
        **overrides: `DecoderConfig` fields the caller's family sets (Qwen2's `qkv_bias`,
            Qwen3's `qk_norm` and `head_dim` default: `vlkit.hub.hf_causal_lm`).

    Raises:
        ValueError: For RoPE scaling variants vlkit does not implement (see `rope_from_hf`).
    """
    theta, scaling = rope_from_hf(hf_config, source)
    heads = hf_config["num_attention_heads"]
    fields: dict[str, Any] = dict(
        vocab_size=hf_config["vocab_size"],
        hidden_size=hf_config["hidden_size"],
        intermediate_size=hf_config["intermediate_size"],
        num_layers=hf_config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf_config.get("num_key_value_heads") or heads,
        head_dim=hf_config.get("head_dim"),
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=hf_config.get("rms_norm_eps", 1e-6),
        max_position_embeddings=hf_config.get("max_position_embeddings", 2048),
        tie_word_embeddings=hf_config.get("tie_word_embeddings", False),
        attention_bias=hf_config.get("attention_bias", False),
        mlp_bias=hf_config.get("mlp_bias", False),
        hidden_act=hf_config.get("hidden_act", "silu"),
    )
    fields.update(overrides)
    return DecoderConfig(**fields)


def from_hf_llama_state_dict(
    state: Mapping[str, torch.Tensor], config: DecoderConfig, prefix: str = ""
) -> DecoderLM:
    """Build a `DecoderLM` and load a Hugging Face `LlamaForCausalLM` state dict into it.

    Args:
        state: HF parameter names (`model.layers.0.self_attn.q_proj.weight`, `lm_head.weight`).
        config: Matching config (see `config_from_hf_llama`).
        prefix: Stripped from keys first, e.g. "model.text_model." inside a VLM checkpoint; keys
            without it are ignored, except a top-level `lm_head.weight` (Idefics3/SmolVLM layout:
            `model.text_model.*` plus `lm_head.weight`).

    Returns:
        The model with loaded weights (strict: every parameter must be present).
    """
    sd: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("rotary_emb.inv_freq") or not key.startswith((prefix, "lm_head.")):
            continue
        key = key[len(prefix) :] if key.startswith(prefix) else key
        if not key.startswith(("model.", "lm_head.")):
            key = "model." + key  # a bare LlamaModel state dict
        sd[key] = value
    if config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    model = DecoderLM(config)
    model.load_state_dict(sd, strict=True)
    return model
