"""Hugging Face OPT checkpoints (`OPTForCausalLM`) <-> vlkit's `OPTLM`.

`OPTLM` keeps HF's parameter names below `model.decoder.` (shortened to `model.`), so the
conversion renames a prefix and ties the LM head when the config says so. Used alone and for the
language model of BLIP-2 checkpoints (`hf_blip2`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vlkit.errors import CheckpointError
from vlkit.hub.hf_config_files import config_model_type, read_json_object
from vlkit.hub.weights import (
    HF_WEIGHT_FILES,
    find_weights,
    load_into,
    read_weights,
    skip_weight_init,
)
from vlkit.models.decoder.opt import OPTLM, OPTConfig

__all__ = [
    "OPT_MODEL_TYPES",
    "config_from_hf_opt",
    "from_hf_opt_state_dict",
    "is_opt_directory",
    "load_opt",
    "opt_state_dict",
]

OPT_MODEL_TYPES = ("opt",)


def config_from_hf_opt(hf_config: Mapping[str, Any]) -> OPTConfig:
    """An `OPTConfig` from a transformers `OPTConfig` dict (`config.json` / `to_dict()`).

    Raises:
        KeyError: A required key (`hidden_size`, ...) is missing.
        ValueError: An unsupported activation or head count.
    """
    hidden = hf_config["hidden_size"]
    return OPTConfig(
        vocab_size=hf_config["vocab_size"],
        hidden_size=hidden,
        num_hidden_layers=hf_config["num_hidden_layers"],
        ffn_dim=hf_config["ffn_dim"],
        num_attention_heads=hf_config["num_attention_heads"],
        max_position_embeddings=hf_config.get("max_position_embeddings", 2048),
        word_embed_proj_dim=hf_config.get("word_embed_proj_dim") or hidden,
        do_layer_norm_before=hf_config.get("do_layer_norm_before", True),
        remove_final_layer_norm=hf_config.get("_remove_final_layer_norm", False),
        enable_bias=hf_config.get("enable_bias", True),
        layer_norm_elementwise_affine=hf_config.get("layer_norm_elementwise_affine", True),
        activation_function=hf_config.get("activation_function", "relu"),
        tie_word_embeddings=hf_config.get("tie_word_embeddings", True),
    )


def opt_state_dict(
    state: Mapping[str, torch.Tensor], config: OPTConfig, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """HF `OPTForCausalLM` keys below `prefix` -> `OPTLM` keys (other keys are dropped).

    A tied LM head is taken from the token embeddings (checkpoints may omit `lm_head.weight`).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix) :]
        if key.startswith("model.decoder."):
            out["model." + key[len("model.decoder.") :]] = value
        elif key.startswith("decoder."):  # a bare OPTModel
            out["model." + key[len("decoder.") :]] = value
        elif key.startswith("lm_head."):
            out[key] = value
    if config.tie_word_embeddings and "model.embed_tokens.weight" in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def from_hf_opt_state_dict(
    state: Mapping[str, torch.Tensor], config: OPTConfig, prefix: str = ""
) -> OPTLM:
    """An `OPTLM` with the weights of a HF `OPTForCausalLM` state dict (strict)."""
    model = OPTLM(config)
    model.load_state_dict(opt_state_dict(state, config, prefix), strict=True)
    return model


def is_opt_directory(directory: str | Path) -> bool:
    """Whether `directory/config.json` has `model_type` "opt" (nothing loaded)."""
    return config_model_type(directory) in OPT_MODEL_TYPES


def load_opt(directory: str | Path) -> OPTLM:
    """Load a transformers `OPTForCausalLM` directory into an `OPTLM` (eval mode), with the
    checkpoint's bos / eos / pad ids on its config (generation_config.json first).

    Raises:
        CheckpointError: An unreadable or unsupported config.json (naming the key), or weights
            with missing, unknown or mis-shaped keys.
    """
    directory = Path(directory)
    path = directory / "config.json"
    hf_config = read_json_object(path)
    try:
        config = config_from_hf_opt(hf_config)
    except KeyError as error:
        raise CheckpointError(f"{path}: missing key {error.args[0]!r}") from error
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from error
    generation: dict[str, Any] = {}
    if (directory / "generation_config.json").is_file():
        generation = read_json_object(directory / "generation_config.json")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, key, generation.get(key, hf_config.get(key)))
    with skip_weight_init():  # every weight comes from the file
        model = OPTLM(config)
    weights = find_weights(directory, HF_WEIGHT_FILES)
    load_into(model, opt_state_dict(read_weights(weights), config), str(weights))
    return model.eval()
