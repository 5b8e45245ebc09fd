"""What a CLIP-like checkpoint needs for inference: its config, its tokenizer, `load_clip`.

Tokenizers: a checkpoint with tokenizer files (`vocab.json`, `spiece.model`, `tokenizer.json`)
uses them; CLIP checkpoints without any (open_clip directories, vlkit's own format) use the
standard CLIP vocabulary shipped with vlkit, with the model's context length.

`vlkit.get_tokenizer` and `vlkit.load_clip` are these functions; they live here, below the
`vlkit.api` facade, so that inference (image search, embedding) can load checkpoints without
importing the facade.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlkit.data import tokenizers, transforms
from vlkit.data.preprocess_config import PreprocessConfig
from vlkit.errors import CheckpointError
from vlkit.hub.hf_clip import config_from_hf
from vlkit.hub.hf_preprocess import HF_PREPROCESSOR_CONFIG, preprocess_config_from_hf
from vlkit.hub.loading import VLKIT_CONFIG, from_pretrained, resolve_checkpoint
from vlkit.hub.open_clip import config_from_open_clip, read_open_clip_config
from vlkit.models.clip import CLIP, CLIPConfig
from vlkit.models.presets import PRESETS

__all__ = ["checkpoint_config", "get_tokenizer", "get_transform", "load_clip"]

_TOKENIZER_FILES = ("vocab.json", "spiece.model", "tokenizer.json")


def checkpoint_config(directory: Path) -> CLIPConfig | None:
    """The CLIPConfig a checkpoint directory describes, or None if it has no model config."""
    if (directory / VLKIT_CONFIG).is_file():
        return CLIPConfig.from_json(directory / VLKIT_CONFIG)
    if (directory / "open_clip_config.json").is_file():
        return config_from_open_clip(*read_open_clip_config(directory / "open_clip_config.json"))
    if (directory / "config.json").is_file():
        return config_from_hf(json.loads((directory / "config.json").read_text()), str(directory))
    return None


def get_tokenizer(name_or_path: str | Path | CLIP, context_length: int | None = None) -> Any:
    """The tokenizer for a preset name, checkpoint directory, hub id or model.

    CLIP checkpoints without tokenizer files (open_clip directories, vlkit's own format) use the
    standard CLIP vocabulary shipped with vlkit, with the model's context length.
    """
    if isinstance(name_or_path, CLIP):
        config = name_or_path.config
        return _tokenizer_for_config(config, context_length, "the given model")
    name = str(name_or_path)
    if name in PRESETS:
        return _tokenizer_for_config(PRESETS[name], context_length, f"preset {name!r}")
    if name == "clip" or not (Path(name).exists() or name.count("/") == 1):
        return tokenizers.get_tokenizer(name, context_length=context_length)
    directory = resolve_checkpoint(name)
    if directory.is_dir() and not any((directory / f).is_file() for f in _TOKENIZER_FILES):
        config = checkpoint_config(directory)
        if config is not None:
            return _tokenizer_for_config(config, context_length, str(directory))
    return tokenizers.get_tokenizer(str(directory), context_length=context_length)


def _tokenizer_for_config(config: CLIPConfig, context_length: int | None, source: str) -> Any:
    if config.model_type != "clip" or config.text.vocab_size != tokenizers.CLIP_VOCAB_SIZE:
        raise CheckpointError(
            f"{source}: no tokenizer files, and the model does not use CLIP's 49,408-token "
            "vocabulary; pass the checkpoint directory that holds its tokenizer"
        )
    return tokenizers.get_tokenizer(
        "clip", context_length=context_length or config.text.context_length
    )


def load_clip(model_path: str | Path) -> tuple[CLIP, Any, Any]:
    """A CLIP-like checkpoint, ready for inference: (model in eval mode, tokenizer, transform).

    Raises:
        CheckpointError: The path holds no checkpoint, or one that is not CLIP-like (e.g. a
            generative VLM).
    """
    directory = resolve_checkpoint(model_path)  # a hub id is downloaded once, here
    model = from_pretrained(directory)
    if not isinstance(model, CLIP):
        raise CheckpointError(
            f"{model_path}: a {type(model).__name__}, not a CLIP-like model "
            "(this needs encode_image / encode_text)"
        )
    tokenizer = get_tokenizer(directory, context_length=model.config.text.context_length)
    return model.eval(), tokenizer, get_transform(model.config.preprocess, train=False)


def get_transform(name_or_path: str | Path | CLIP | PreprocessConfig, train: bool = False) -> Any:
    """The image transform for a preset, checkpoint or model.

    It maps a PIL image (any mode), numpy array or torch tensor to the `(3, H, W)` float32
    input, reproducing the checkpoint's reference (open_clip, or transformers' default image
    processor for a Hugging Face `preprocessor_config.json`; see `vlkit.data.transforms`).
    """
    if isinstance(name_or_path, CLIP):
        return transforms.get_transform(name_or_path.config.preprocess, train=train)
    if isinstance(name_or_path, PreprocessConfig):
        return transforms.get_transform(name_or_path, train=train)
    name = str(name_or_path)
    if name in PRESETS:
        return transforms.get_transform(PRESETS[name].preprocess, train=train)
    directory = resolve_checkpoint(name)
    if (directory / HF_PREPROCESSOR_CONFIG).is_file():
        return transforms.get_transform(preprocess_config_from_hf(directory), train=train)
    config = checkpoint_config(directory) if directory.is_dir() else None
    if config is None:
        raise CheckpointError(
            f"{directory}: no preprocessor_config.json and no model config to derive one from"
        )
    return transforms.get_transform(config.preprocess, train=train)
