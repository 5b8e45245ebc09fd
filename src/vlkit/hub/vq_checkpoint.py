"""vlkit's own checkpoints of the VQ image tokenizer and the Chameleon decoder.

A directory holds `model.safetensors` and one JSON config, `vq_tokenizer_config.json`
(`VQTokenizerConfig`) or `chameleon_config.json` (`ChameleonConfig`). Each file is written
atomically. The quantizer's buffers (EMA statistics, idle counts, whether k-means still has to
run) are part of the weights, so a loaded tokenizer continues training where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from vlkit.errors import CheckpointError
from vlkit.hub.weights import load_into, read_weights, write_json, write_safetensors
from vlkit.models.chameleon import ChameleonConfig, ChameleonLM
from vlkit.models.vq_tokenizer import VQTokenizer, VQTokenizerConfig
from vlkit.overrides import ConfigError, check_json_types

__all__ = [
    "CHAMELEON_CONFIG",
    "VQ_TOKENIZER_CONFIG",
    "load_chameleon",
    "load_vq_tokenizer",
    "save_chameleon",
    "save_vq_tokenizer",
]

VQ_TOKENIZER_CONFIG = "vq_tokenizer_config.json"
CHAMELEON_CONFIG = "chameleon_config.json"
WEIGHTS = "model.safetensors"


def _save(model: nn.Module, config: dict, directory: str | Path, config_name: str) -> None:
    directory = Path(directory)
    write_safetensors(model.state_dict(), directory / WEIGHTS)
    write_json(config, directory / config_name)


def _read_config(directory: Path, config_name: str, cls: type) -> dict:
    path = directory / config_name
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {config_name} (not a {cls.__name__} directory)")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(
            f"{path}: not valid JSON ({error.msg}, line {error.lineno})"
        ) from None
    try:
        check_json_types(cls, values)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return values


def save_vq_tokenizer(tokenizer: VQTokenizer, directory: str | Path) -> None:
    """Writes `directory/model.safetensors` and `directory/vq_tokenizer_config.json`."""
    _save(tokenizer, tokenizer.config.to_dict(), directory, VQ_TOKENIZER_CONFIG)


def load_vq_tokenizer(directory: str | Path) -> VQTokenizer:
    """The `VQTokenizer` saved in `directory` (in eval mode).

    Raises:
        CheckpointError: The config or weights are missing, unreadable or do not match.
        ConfigError: A config value has the wrong type or range (naming the file and key).
    """
    directory = Path(directory)
    values = _read_config(directory, VQ_TOKENIZER_CONFIG, VQTokenizerConfig)
    model = VQTokenizer(VQTokenizerConfig.from_dict(values))
    load_into(model, read_weights(directory / WEIGHTS), str(directory / WEIGHTS))
    return model.eval()


def save_chameleon(model: ChameleonLM, directory: str | Path) -> None:
    """Writes `directory/model.safetensors` and `directory/chameleon_config.json`."""
    # A tied LM head would be saved twice; vlkit's Chameleon never ties it.
    _save(model, model.config.to_dict(), directory, CHAMELEON_CONFIG)


def load_chameleon(directory: str | Path) -> ChameleonLM:
    """The `ChameleonLM` saved in `directory` (in eval mode); raises as `load_vq_tokenizer`."""
    directory = Path(directory)
    values = _read_config(directory, CHAMELEON_CONFIG, ChameleonConfig)
    model = ChameleonLM(ChameleonConfig.from_dict(values))
    load_into(model, read_weights(directory / WEIGHTS), str(directory / WEIGHTS))
    return model.eval()
