"""The public entry points that accept a preset name, a checkpoint directory or a model.

`get_tokenizer` and `get_transform` answer "what does this model expect?" for anything
`create_model` or `from_pretrained` accepts, so user code never has to know which format a
checkpoint came in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.data import transforms
from vlkit.data.preprocess_config import PreprocessConfig
from vlkit.hub import CheckpointError, resolve_checkpoint
from vlkit.hub.clip_checkpoint import checkpoint_config, get_tokenizer, load_clip
from vlkit.hub.hf_preprocess import HF_PREPROCESSOR_CONFIG, preprocess_config_from_hf
from vlkit.models.clip import CLIP
from vlkit.models.presets import PRESETS

__all__ = ["get_tokenizer", "get_transform", "load_clip"]


def get_transform(name_or_path: str | Path | CLIP | PreprocessConfig, train: bool = False) -> Any:
    """The image transform (PIL image -> (3, S, S) tensor) for a preset, checkpoint or model."""
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
