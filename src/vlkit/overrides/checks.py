"""Value checks for configs and JSON files: ranges for `__post_init__`, HF `config.json` fields by
schema, vlkit config files by their dataclass annotations. Every failure is one `ConfigError`
line naming the key's path (and the file).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Union

from vlkit.overrides.parsing import ConfigError, _convert, _is_config, field_types

__all__ = [
    "JsonField",
    "check_json_fields",
    "check_json_types",
    "check_range",
    "describe_interval",
    "outside_interval",
]


def outside_interval(
    value: float,
    low: float | None,
    high: float | None,
    low_open: bool = False,
    high_open: bool = False,
) -> bool:
    """Whether `value` lies outside low..high (None: unbounded; `*_open`: the bound excluded)."""
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    return too_low or too_high


def describe_interval(
    low: float | None, high: float | None, low_open: bool = False, high_open: bool = False
) -> str:
    """The allowed values for a message: '>= 1', '< 2', 'in (0, 1]'."""
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_range(
    key: str,
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Refuses a number outside low..high (None passes: "not set"); for `__post_init__`.

    Args:
        key: The setting's dotted name, for the message ("optim.max_steps").
        low_open, high_open: Exclude the bound itself (a learning rate must be > 0).

    Raises:
        ConfigError: "optim.max_steps: must be >= 1, got 0"; inf and nan are refused
            ("must be finite") whatever the bounds.
    """
    if value is None:
        return
    if not math.isfinite(value):  # inf passes a one-sided bound; nan compares false
        raise ConfigError(f"{key}: must be finite, got {value!r}")
    if outside_interval(value, low, high, low_open, high_open):
        allowed = describe_interval(low, high, low_open, high_open)
        raise ConfigError(f"{key}: must be {allowed}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class JsonField:
    """What one key of a JSON config file (a model's `config.json`) must hold.

    Attributes:
        kind: int, float (an int is fine too), str or bool.
        low: Smallest value allowed (numbers), inclusive unless `low_open`.
        nullable: null is allowed (the reader then uses its default).
    """

    kind: type
    low: float | None = None
    low_open: bool = False
    nullable: bool = False


_JSON_KIND_NAMES = {int: "an int", float: "a number", str: "a string", bool: "true or false"}


def check_json_fields(values: Any, schema: Mapping[str, Any], source: str, path: str = "") -> None:
    """Checks a parsed JSON object against `schema` key by key, before anything reads it.

    `schema` maps a key to a `JsonField` or, for a nested object, to a nested schema (the
    object may then be null or absent: the reader uses defaults). Keys missing from the file,
    and keys the schema does not name, are left to the reader.

        check_json_fields(json.loads(text), {"vision_config": {"hidden_size": JsonField(int, 1)}},
                          "ckpt/config.json")

    Raises:
        ConfigError: One line with the file and the key's path, e.g.
            `ckpt/config.json: vision_config.hidden_size must be an int, got "64"`.
    """
    import json  # only for quoting the offending value as the file spells it

    where = path or "the top level"
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: {where} must be a JSON object, got {json.dumps(values)[:60]}")
    for key, rule in schema.items():
        if key not in values:
            continue
        value, name = values[key], f"{path}.{key}" if path else key
        shown = json.dumps(value)[:60]
        if isinstance(rule, Mapping):
            if value is not None:
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{source}: {name} must be a JSON object, got {shown}")
                check_json_fields(value, rule, source, name)
            continue
        if value is None:
            if rule.nullable:
                continue
            raise ConfigError(f"{source}: {name} must be {_JSON_KIND_NAMES[rule.kind]}, got null")
        fits = isinstance(value, rule.kind) and (rule.kind is bool or not isinstance(value, bool))
        if rule.kind is float and isinstance(value, int) and not isinstance(value, bool):
            fits = True
        if not fits:
            raise ConfigError(
                f"{source}: {name} must be {_JSON_KIND_NAMES[rule.kind]}, got {shown}"
            )
        if rule.kind is float and not math.isfinite(value):  # json reads Infinity and NaN
            raise ConfigError(f"{source}: {name} must be finite, got {shown}")
        if rule.low is not None and (value <= rule.low if rule.low_open else value < rule.low):
            bound = f"{'>' if rule.low_open else '>='} {rule.low:g}"
            raise ConfigError(f"{source}: {name} must be {bound}, got {shown}")


def check_json_types(cls: type, values: Any, path: str = "") -> None:
    """Checks a parsed JSON object meant for the dataclass `cls` against its field annotations,
    recursing into nested configs, before any constructor sees it (where a "64" for an int
    would fail later as a TypeError about tensor sizes).

    Keys that name no field are left to the caller, which reports them with its own message.
    For a field that is a union of configs (`ViTConfig | ResNetConfig`), the option whose
    fields cover most of the object's keys is checked.

    Raises:
        ConfigError: Naming the key's dotted path: "vision.width: expected an int, got '64'".
    """
    if not isinstance(values, Mapping):
        where = path or "the top level"
        raise ConfigError(f"{where}: expected a JSON object, got {type(values).__name__}")
    annotations = field_types(cls)
    for key, value in values.items():
        if key not in annotations:
            continue
        annotation, name = annotations[key], f"{path}.{key}" if path else key
        options = (
            typing.get_args(annotation)
            if typing.get_origin(annotation) in (Union, types.UnionType)
            else (annotation,)
        )
        configs = [option for option in options if _is_config(option)]
        if not configs:
            _convert(value, annotation, name, parse=False)
        elif value is None and type(None) in options:
            continue
        elif not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a JSON object, got {type(value).__name__}")
        else:
            best = max(configs, key=lambda option: len(set(value) & set(field_types(option))))
            check_json_types(best, value, name)
