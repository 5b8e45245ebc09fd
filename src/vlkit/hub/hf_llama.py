"""Hugging Face Llama checkpoints (`LlamaForCausalLM`, `LlamaModel`) <-> vlkit's `DecoderLM`.

`DecoderLM` keeps HF's parameter names (`model.layers.N.self_attn.q_proj.weight`, ...), so the
conversion is a near-identity mapping: strip a prefix, drop the RoPE `inv_freq` buffers, tie the
LM head when the config says so. Used for SmolVLM / Idefics3 text models (`hf_smolvlm`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from vlkit.models.decoder import DecoderConfig, DecoderLM

__all__ = ["config_from_hf_llama", "from_hf_llama_state_dict"]


def config_from_hf_llama(hf_config: Mapping[str, Any]) -> DecoderConfig:
    """Build a `DecoderConfig` from a Hugging Face `LlamaConfig` dict (`config.json` / `to_dict()`).

    Raises:
        NotImplementedError: For RoPE scaling variants other than the default (e.g. "llama3").
    """
    rope = hf_config.get("rope_scaling") or hf_config.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise NotImplementedError(f"RoPE scaling {rope_type!r} is not supported")
    theta = hf_config.get("rope_theta") or rope.get("rope_theta") or 10000.0
    heads = hf_config["num_attention_heads"]
    return DecoderConfig(
        vocab_size=hf_config["vocab_size"],
        hidden_size=hf_config["hidden_size"],
        intermediate_size=hf_config["intermediate_size"],
        num_layers=hf_config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf_config.get("num_key_value_heads") or heads,
        head_dim=hf_config.get("head_dim"),
        rope_theta=float(theta),
        rms_norm_eps=hf_config.get("rms_norm_eps", 1e-6),
        max_position_embeddings=hf_config.get("max_position_embeddings", 2048),
        tie_word_embeddings=hf_config.get("tie_word_embeddings", False),
        attention_bias=hf_config.get("attention_bias", False),
        mlp_bias=hf_config.get("mlp_bias", False),
    )


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
