"""Loading SmolVLM / SmolVLM2 / Idefics3 checkpoints (transformers' `SmolVLMForConditionalGeneration`
and `Idefics3ForConditionalGeneration`) into a vlkit `GenerativeVLM`.

Checkpoint layout: `model.vision_model.*` (SigLIP tower without head), `model.connector.*`
(pixel-shuffle + bias-free projection), `model.text_model.*` (Llama without `lm_head`) and a
top-level `lm_head.weight` (absent when tied to the token embeddings).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vlkit.errors import CheckpointError
from vlkit.fusion.pixel_shuffle import PixelShuffleConnector
from vlkit.hub.hf_config_files import config_model_type, generation_default, read_json_object
from vlkit.hub.hf_llama import config_from_hf_llama
from vlkit.hub.weights import HF_WEIGHT_FILES, find_weights, load_into, read_weights
from vlkit.models.decoder import DecoderLM
from vlkit.models.smolvlm import GenerativeVLM
from vlkit.models.smolvlm_vision import SmolVLMVisionConfig, SmolVLMVisionTransformer

SMOLVLM_MODEL_TYPES = ("smolvlm", "idefics3")
_PREFIXES = {"model.vision_model.": "vision.", "model.connector.": "connector."}

__all__ = [
    "SMOLVLM_MODEL_TYPES",
    "build_smolvlm",
    "is_smolvlm_directory",
    "load_smolvlm",
    "smolvlm_state_dict",
    "vision_config_from_hf",
]


def is_smolvlm_directory(directory: str | Path) -> bool:
    """Whether `directory` holds a Hugging Face SmolVLM / Idefics3 checkpoint: a `config.json`
    whose `model_type` is one of `SMOLVLM_MODEL_TYPES` (False when it is missing or unreadable)."""
    return config_model_type(directory) in SMOLVLM_MODEL_TYPES


def vision_config_from_hf(hf: Mapping[str, Any]) -> SmolVLMVisionConfig:
    """The vision tower's config from a transformers `vision_config` dict (same field names;
    unrelated keys are ignored)."""
    names = SmolVLMVisionConfig.__dataclass_fields__.keys()
    return SmolVLMVisionConfig(**{key: hf[key] for key in names if key in hf})


def build_smolvlm(hf_config: dict[str, Any], source: str = "config.json") -> GenerativeVLM:
    """An uninitialised `GenerativeVLM` shaped like a SmolVLM/Idefics3 `config.json` dict."""
    model_type = hf_config.get("model_type")
    if model_type not in SMOLVLM_MODEL_TYPES:
        raise CheckpointError(f"{source}: model_type {model_type!r} is not smolvlm or idefics3")
    try:
        vision_cfg = vision_config_from_hf(hf_config.get("vision_config") or {})
        text = dict(hf_config["text_config"])
        text.setdefault("rms_norm_eps", 1e-5)  # transformers' default for the SmolVLM text model
        tied = hf_config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
        text["tie_word_embeddings"] = bool(tied)
        text_cfg = config_from_hf_llama(text)
        image_token_id = int(hf_config.get("image_token_id", 128257))
    except (KeyError, TypeError, ValueError, NotImplementedError) as error:
        raise CheckpointError(f"{source}: unsupported SmolVLM config ({error})") from error
    scale = int(hf_config.get("scale_factor", 2))
    vision = SmolVLMVisionTransformer(vision_cfg)
    connector = PixelShuffleConnector(vision_cfg.hidden_size, text_cfg.hidden_size, scale)
    return GenerativeVLM(vision, connector, DecoderLM(text_cfg), image_token_id)


def smolvlm_state_dict(
    state: dict[str, torch.Tensor], model: GenerativeVLM
) -> dict[str, torch.Tensor]:
    """Rename transformers keys to `GenerativeVLM` keys; unknown keys keep their name (so that
    `load_into` reports them). A missing `lm_head.weight` is taken from the embeddings when tied."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        for old, new in _PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        else:
            if key.startswith("model.text_model."):
                key = "decoder.model." + key[len("model.text_model.") :]
            elif key.startswith("lm_head."):
                key = "decoder." + key
        out[key] = value
    embed = "decoder.model.embed_tokens.weight"
    if model.decoder.config.tie_word_embeddings and embed in out:
        out["decoder.lm_head.weight"] = out[embed]
    return out


def load_smolvlm(directory: str | Path) -> GenerativeVLM:
    """Load a SmolVLM / SmolVLM2 / Idefics3 checkpoint directory into a `GenerativeVLM` (eval).

    Raises:
        CheckpointError: For an unreadable or unsupported config, or weights with missing,
            unknown or mis-shaped keys (all named in the message).
    """
    directory = Path(directory)
    config_path = directory / "config.json"
    hf_config = read_json_object(config_path)
    model = build_smolvlm(hf_config, str(config_path))
    weights = find_weights(directory, HF_WEIGHT_FILES)
    state = read_weights(weights)
    load_into(model, smolvlm_state_dict(state, model), str(weights))
    model.eos_token_id = generation_default(directory, hf_config, "eos_token_id")
    model.pad_token_id = generation_default(directory, hf_config, "pad_token_id")
    return model.eval()
