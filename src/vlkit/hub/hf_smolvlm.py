"""Loading SmolVLM / SmolVLM2 / Idefics3 checkpoints (transformers' `SmolVLMForConditionalGeneration`
and `Idefics3ForConditionalGeneration`) into a vlkit `GenerativeVLM`.

Checkpoint layout: `model.vision_model.*` (SigLIP tower without head), `model.connector.*`
(pixel-shuffle + bias-free projection), `model.text_model.*` (Llama without `lm_head`) and a
top-level `lm_head.weight` (absent when tied to the token embeddings).

`save_smolvlm` (what `GenerativeVLM.save_pretrained` calls) writes the same layout back: the
config.json the model was built from, `model.safetensors` in transformers' names, and the
processor / tokenizer / chat-template files of the directory it was loaded from, so that
`SmolVLMForConditionalGeneration` / `Idefics3ForConditionalGeneration.from_pretrained` and
`AutoProcessor` load a fine-tuned model.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vlkit.errors import CheckpointError
from vlkit.fusion.pixel_shuffle import PixelShuffleConnector
from vlkit.hub.hf_config_files import config_model_type, generation_default, read_json_object
from vlkit.hub.hf_llama import config_from_hf_llama
from vlkit.hub.weights import (
    HF_WEIGHT_FILES,
    find_weights,
    load_into,
    read_weights,
    skip_weight_init,
    write_json,
    write_safetensors,
)
from vlkit.models.decoder import DecoderLM
from vlkit.models.smolvlm import GenerativeVLM
from vlkit.models.smolvlm_vision import SmolVLMVisionConfig, SmolVLMVisionTransformer

SMOLVLM_MODEL_TYPES = ("smolvlm", "idefics3")
_PREFIXES = {"model.vision_model.": "vision.", "model.connector.": "connector."}
# vlkit prefix -> transformers prefix, for writing (the inverse of `smolvlm_state_dict`).
_HF_PREFIXES = (
    ("vision.", "model.vision_model."),
    ("connector.", "model.connector."),
    ("decoder.model.", "model.text_model."),
    ("decoder.lm_head.", "lm_head."),
)
# Files of a checkpoint directory that hold weights: never copied from the source directory
# by `save_smolvlm` (it writes its own model.safetensors).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json", ".msgpack", ".h5")

__all__ = [
    "SMOLVLM_MODEL_TYPES",
    "build_smolvlm",
    "is_smolvlm_directory",
    "load_smolvlm",
    "save_smolvlm",
    "smolvlm_state_dict",
    "to_hf_smolvlm_state_dict",
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
    model = GenerativeVLM(vision, connector, DecoderLM(text_cfg), image_token_id)
    model.hf_config = dict(hf_config)  # written back by `save_smolvlm`
    return model


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
    with skip_weight_init():  # every weight comes from the file
        model = build_smolvlm(hf_config, str(config_path))
    weights = find_weights(directory, HF_WEIGHT_FILES)
    state = read_weights(weights)
    load_into(model, smolvlm_state_dict(state, model), str(weights))
    model.eos_token_id = generation_default(directory, hf_config, "eos_token_id")
    model.pad_token_id = generation_default(directory, hf_config, "pad_token_id")
    model.source_directory = str(directory)  # `save_smolvlm` copies its processor files
    return model.eval()


def to_hf_smolvlm_state_dict(model: GenerativeVLM) -> dict[str, torch.Tensor]:
    """`model`'s weights under transformers' SmolVLM / Idefics3 names; a tied `lm_head` is
    left out, as transformers' `save_pretrained` does."""
    state: dict[str, torch.Tensor] = {}
    tied = model.decoder.config.tie_word_embeddings
    for key, value in model.state_dict().items():
        if tied and key == "decoder.lm_head.weight":
            continue
        for ours, theirs in _HF_PREFIXES:
            if key.startswith(ours):
                key = theirs + key[len(ours) :]
                break
        state[key] = value.detach().contiguous()
    return state


def save_smolvlm(model: GenerativeVLM, directory: str | Path) -> None:
    """Writes `model` as a transformers SmolVLM / Idefics3 directory.

    The source directory's non-weight files (generation config, tokenizer, chat template,
    processor and image-processor configs) are copied as they are; then config.json (the one
    the model was built from) and model.safetensors (transformers' names) are written. A model
    built from a config dict alone (`build_smolvlm`) gets config.json, the weights and a
    generation_config.json of its stop and pad tokens.

    Raises:
        CheckpointError: The model was not built from a SmolVLM / Idefics3 config (it has no
            transformers equivalent to write).
    """
    hf_config = getattr(model, "hf_config", None)
    if not isinstance(hf_config, dict):
        raise CheckpointError(
            f"save_pretrained: this {type(model).__name__} was not loaded from a SmolVLM / "
            "Idefics3 checkpoint (vlkit.from_pretrained) or built by build_smolvlm, so it has "
            "no transformers config to write"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    source = getattr(model, "source_directory", None)
    if source and Path(source).is_dir() and Path(source).resolve() != directory.resolve():
        for path in Path(source).iterdir():
            if path.is_file() and not path.name.endswith(_WEIGHT_SUFFIXES):
                shutil.copy2(path, directory / path.name)
    config = dict(hf_config)
    config["tie_word_embeddings"] = bool(model.decoder.config.tie_word_embeddings)
    write_json(config, directory / "config.json")
    write_safetensors(to_hf_smolvlm_state_dict(model), directory / "model.safetensors",
                      metadata={"format": "pt"})  # fmt: skip
    if not (directory / "generation_config.json").is_file():
        generation = {key: value for key in ("eos_token_id", "pad_token_id")
                      if (value := getattr(model, key, None)) is not None}  # fmt: skip
        if generation:
            write_json(generation, directory / "generation_config.json")


# `GenerativeVLM.save_pretrained` delegates here: models cannot import the format layer.
GenerativeVLM.checkpoint_writer = save_smolvlm
