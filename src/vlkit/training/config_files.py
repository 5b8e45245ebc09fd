"""Reading a training config: a JSON file, a Python file defining `CONFIG`, or a built-in one
(`vlkit/configs/NAME.py`), then `key=value` overrides.

    config = load_train_config("runs/x/config.json", ["optim.lr=1e-3", "batch_size=8"])
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

from vlkit.overrides import ConfigError, apply_overrides
from vlkit.training.config import FLAT_KEYS, TrainConfig

__all__ = ["load_train_config"]


def load_train_config(source: str | None, overrides: list[str] | None = None) -> TrainConfig:
    """A TrainConfig from a JSON file, a Python file defining `CONFIG` (a dict or TrainConfig),
    a named config in vlkit/configs/, or defaults; then `key=value` overrides (dotted such as
    `optim.lr=1e-3`, or the flat keys of `FLAT_KEYS`).

    Raises:
        ConfigError: An unknown key or a value of the wrong type (a one-line message naming it).
        ValueError: No such config file or built-in config.
    """
    config = TrainConfig()
    if source:
        path = Path(source)
        if not path.is_file():
            builtin = Path(__file__).resolve().parents[1] / "configs" / f"{source}.py"
            if not builtin.is_file():
                raise ValueError(f"config {source!r}: no such file or built-in config")
            path = builtin
        config = _read_config_file(path)
    return apply_overrides(config, overrides or [], FLAT_KEYS)


def _read_config_file(path: Path) -> TrainConfig:
    """A config file's TrainConfig; every problem is one error naming the file (and the key)."""
    try:
        if path.suffix == ".json":
            try:
                values = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(f"not valid JSON ({error})") from None
            if not isinstance(values, dict):
                raise ValueError(f"expected a JSON object of settings, got {type(values).__name__}")
            return TrainConfig.from_dict(values)
        loaded = runpy.run_path(str(path)).get("CONFIG")
        if loaded is None:
            raise ValueError("defines no CONFIG")
        if isinstance(loaded, TrainConfig):
            return loaded
        if not isinstance(loaded, dict):
            raise ValueError(f"CONFIG must be a dict or a TrainConfig, got {type(loaded).__name__}")
        return TrainConfig.from_dict(loaded)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
