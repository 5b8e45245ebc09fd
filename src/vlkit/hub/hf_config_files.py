"""The JSON files every Hugging Face checkpoint conversion reads: `config.json` and
`generation_config.json`.

Each `hf_*` module recognises its directories by `config.json`'s `model_type`
(`config_model_type`), reads the whole file with one error message (`read_json_object`), and
takes the default stop / pad tokens where transformers' `generate` takes them
(`generation_default`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlkit.errors import CheckpointError

__all__ = ["config_model_type", "generation_default", "read_json_object"]


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`.

    Raises:
        CheckpointError: The file cannot be read, is not valid JSON, or holds something other
            than an object (one line naming the file).
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def config_model_type(directory: str | Path) -> str | None:
    """The `model_type` of `directory/config.json`; None when the file is missing, unreadable
    or has none (the `is_*_directory` tests load nothing and never raise)."""
    try:
        model_type = json.loads((Path(directory) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return model_type


def generation_default(directory: Path, hf_config: Mapping[str, Any], key: str) -> Any:
    """`key` (e.g. "eos_token_id", "pad_token_id") as transformers' `generate` picks its default:
    `generation_config.json` when it has a non-null value (SmolVLM2: `<end_of_utterance>`), else
    the model config's top level, else its `text_config`."""
    path = directory / "generation_config.json"
    if path.is_file():
        try:
            value = json.loads(path.read_text()).get(key)
        except json.JSONDecodeError as error:
            raise CheckpointError(f"cannot read {path}: {error}") from error
        if value is not None:
            return value
    value = hf_config.get(key)
    return value if value is not None else (hf_config.get("text_config") or {}).get(key)
