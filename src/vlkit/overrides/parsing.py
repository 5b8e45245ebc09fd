"""Typed settings for (nested) dataclass configs: the one parser of `key=value` overrides.

    config = apply_overrides(TrainConfig(), ["optim.lr=1e-3", "precision=bf16"])
    config = from_dict(TrainConfig, json.loads(text), aliases=FLAT_KEYS)

Values are read by each field's type annotation (bool, int, float, str, `X | None`, `Literal`,
`tuple[...]`, `list[...]`, nested dataclasses), so `8` is an int where the field is an int and a
string where it is a string. An unknown key or a value of the wrong type raises one
`ConfigError` whose one-line message names the key and what it allows. `aliases` maps old
spellings to dotted paths (`{"batch_size": "optim.batch_size"}`), so configs can nest without
breaking the flat keys people already type. This module sits at the ground floor: it knows no
model, no checkpoint and no command line. Range checks and JSON-file checks are in
`vlkit.overrides.checks`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import math
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar, Union

__all__ = [
    "ConfigError",
    "accepts_aliases",
    "apply_overrides",
    "check_fields",
    "field_types",
    "from_dict",
    "parse_value",
    "to_dict",
    "update",
]

Config = TypeVar("Config")

_NONE_WORDS = ("none", "null")
_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


class ConfigError(ValueError):
    """A setting names no field, or its value does not fit the field's type."""


class _NotFinite(ConfigError):
    """A float setting given inf or nan (kept apart so that `float | None` reports it)."""


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every field of the dataclass `cls` (string annotations too)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_config(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def _describe(annotation: Any) -> str:
    """How an error message names a type: 'an int', 'one of fp32, bf16', 'a float or none'."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if annotation is type(None):
        return "none"
    if origin in (tuple, list):
        names = [getattr(a, "__name__", str(a)) for a in args if a is not Ellipsis]
        if not args or args[-1] is Ellipsis or origin is list:
            return f"comma-separated {names[0] if names else 'value'}s"
        return "comma-separated " + ", ".join(names)
    name = getattr(annotation, "__name__", str(annotation))
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _mismatch(key: str, annotation: Any, value: Any) -> ConfigError:
    return ConfigError(f"{key}: expected {_describe(annotation)}, got {value!r}")


def _split_sequence(text: str) -> list[Any]:
    """'0.9,0.98', '(0.9, 0.98)' or '["a, b", "c"]' -> items (literals stay parsed)."""
    stripped = text.strip()
    if stripped[:1] in "([":
        try:
            parsed = ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            stripped = stripped[1:-1]
        else:
            return list(parsed) if isinstance(parsed, (list, tuple)) else [parsed]
    return [item.strip() for item in stripped.split(",") if item.strip()]


def _sequence(value: Any, annotation: Any, key: str, parse: bool) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    items = _split_sequence(value) if parse and isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise _mismatch(key, annotation, value)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(items) != len(args):
            raise _mismatch(key, annotation, value)
        item_types = list(args)
    else:
        item_types = [args[0] if args else Any] * len(items)
    converted = [
        _convert(item, item_type, f"{key}[{i}]", parse and isinstance(item, str))
        for i, (item, item_type) in enumerate(zip(items, item_types, strict=True))
    ]
    return tuple(converted) if origin is tuple else converted


def _convert(value: Any, annotation: Any, key: str, parse: bool) -> Any:
    """`value` as an instance of `annotation`: parsed from text when `parse`, else checked (and
    widened: int -> float, list -> tuple, path -> str, mapping -> dataclass)."""
    if annotation is tuple or annotation is list:  # bare `tuple` / `list`: any items
        annotation = tuple[Any, ...] if annotation is tuple else list[Any]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if type(None) in args and (
            value is None or (parse and isinstance(value, str) and value.lower() in _NONE_WORDS)
        ):
            return None
        not_finite = None
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, key, parse)
            except _NotFinite as error:  # `float | None` given inf: say so, not "a float"
                not_finite = error
            except ConfigError:
                continue
        raise not_finite or _mismatch(key, annotation, value)
    if origin is Literal:
        for allowed in args:
            try:
                if _convert(value, type(allowed), key, parse) == allowed:
                    return allowed
            except ConfigError:
                continue
        raise _mismatch(key, annotation, value)
    if origin in (tuple, list):
        return _sequence(value, annotation, key, parse)
    if _is_config(annotation):
        if isinstance(value, annotation):
            return value
        if isinstance(value, Mapping):
            return from_dict(annotation, value)
        keys = ", ".join(f"{key}.{name}" for name in field_types(annotation))
        raise ConfigError(f"{key} is a group of settings, not a value (set one of: {keys})")
    if annotation is bool:
        if parse and isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if parse and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise _mismatch(key, annotation, value) from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _mismatch(key, annotation, value)
    if annotation is float:
        if parse and isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise _mismatch(key, annotation, value) from None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            raise _mismatch(key, annotation, value)
        # Every float setting of every config passes here: `float("inf")` parses, and an
        # infinite learning rate or weight decay would "train" to NaN weights with exit 0.
        if not math.isfinite(number):
            raise _NotFinite(f"{key}: must be finite, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, os.PathLike):  # a pathlib.Path for an `out_dir` is what was meant
            return os.fspath(value)
        if isinstance(value, str):
            return value
        raise _mismatch(key, annotation, value)
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise _mismatch(key, annotation, value)
    return value


def parse_value(text: str, annotation: Any, key: str = "value") -> Any:
    """Reads the text of one override (`8`, `bf16`, `none`, `0.9,0.98`) as `annotation`.

    Raises:
        ConfigError: The text does not fit the type; the message names `key`.
    """
    return _convert(text.strip(), annotation, key, parse=True)


def _unknown_key(path: str, cls: type, aliases: Mapping[str, str]) -> ConfigError:
    """ "unknown key 'optim.lrr' (allowed: lr, weight_decay, ...); did you mean 'optim.lr'?"."""
    prefix, _, name = path.rpartition(".")
    allowed = [
        f"{field}.*" if _is_config(annotation) else field
        for field, annotation in field_types(cls).items()
    ]
    known = [f"{prefix}.{a}" if prefix else a for a in allowed]
    known += [alias for alias in aliases if not prefix]
    close = difflib.get_close_matches(path, known, n=1, cutoff=0.75)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown key '{path}' (allowed: {', '.join(allowed)}){hint}")


def _resolve(cls: type, path: str, aliases: Mapping[str, str]) -> tuple[list[str], Any]:
    """A dotted key (after `aliases`) -> its field path and annotation."""
    parts, annotation, owner = path.split("."), None, cls
    for depth, part in enumerate(parts):
        if owner is None or part not in field_types(owner):
            raise _unknown_key(".".join(parts[: depth + 1]), owner or cls, aliases)
        annotation = field_types(owner)[part]
        owner = annotation if _is_config(annotation) else None
    return parts, annotation


def _collect(
    cls: type,
    values: Mapping[str, Any],
    aliases: Mapping[str, str],
    prefix: str,
    parse: bool,
    changes: dict[str, Any],
) -> None:
    """Resolves every (possibly nested or dotted) key of `values` into `changes`, a nested dict
    of converted values keyed by field name."""
    for raw_key, value in values.items():
        path = f"{prefix}{raw_key}"
        # A mapping (or config object) for a group sets the group; anything else under a key
        # that has an alias is the old flat spelling (`data="shapes"` -> `data.source`).
        is_group_value = isinstance(value, Mapping) or dataclasses.is_dataclass(value)
        if path in aliases and not (is_group_value and _names_group(cls, path)):
            path = aliases[path]
        parts, annotation = _resolve(cls, path, aliases)
        if _is_config(annotation) and isinstance(value, Mapping):
            _collect(cls, value, aliases, f"{path}.", parse, changes)
            continue
        target = changes
        for part in parts[:-1]:
            if dataclasses.is_dataclass(target.get(part)):  # a whole group set earlier
                group = target[part]
                target[part] = {f.name: getattr(group, f.name) for f in dataclasses.fields(group)}
            target = target.setdefault(part, {})
        target[parts[-1]] = _convert(value, annotation, path, parse and isinstance(value, str))


def _names_group(cls: type, path: str) -> bool:
    try:
        return _is_config(_resolve(cls, path, {})[1])
    except ConfigError:
        return False


def _rebuild(config: Config, changes: Mapping[str, Any]) -> Config:
    """`config` with `changes` applied, level by level through `dataclasses.replace` (so every
    `__post_init__` check runs again on the new values)."""
    resolved = {
        name: _rebuild(getattr(config, name), change) if isinstance(change, dict) else change
        for name, change in changes.items()
    }
    return dataclasses.replace(config, **resolved)


def update(
    config: Config, values: Mapping[str, Any], aliases: Mapping[str, str] | None = None
) -> Config:
    """A copy of `config` with `values` set: nested mappings (`{"optim": {"lr": 1e-3}}`), dotted
    keys (`{"optim.lr": 1e-3}`) or `aliases` keys, each checked against its field's type.

    Raises:
        ConfigError: An unknown key or a value of the wrong type.
    """
    changes: dict[str, Any] = {}
    _collect(type(config), values, aliases or {}, "", False, changes)
    return _rebuild(config, changes)


def apply_overrides(
    config: Config, overrides: Iterable[str], aliases: Mapping[str, str] | None = None
) -> Config:
    """A copy of `config` with `key=value` / `group.key=value` overrides applied, in order.

    Raises:
        ConfigError: An item without `=`, an unknown key, or a value that does not parse.
    """
    values: dict[str, str] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value")
        values[key.strip()] = text.strip()
    changes: dict[str, Any] = {}
    _collect(type(config), values, aliases or {}, "", True, changes)
    return _rebuild(config, changes)


def from_dict(
    cls: type[Config], values: Mapping[str, Any], aliases: Mapping[str, str] | None = None
) -> Config:
    """`cls` built from its defaults and `values`, as `update` takes them (so a config read
    back from JSON gets its tuples and nested configs again).

    Args:
        cls: A dataclass whose fields all have defaults.
        values: Settings: nested mappings, dotted keys or `aliases` keys.
        aliases: Old spellings -> dotted paths.
    """
    return update(cls(), values, aliases)


def accepts_aliases(aliases: Mapping[str, str]) -> Callable[[type[Config]], type[Config]]:
    """Class decorator: the dataclass's constructor also takes the keys of `aliases` and dotted
    keys, set through `update` after the fields given directly.

        @accepts_aliases({"steps": "optim.max_steps"})
        @dataclass
        class Recipe: ...

        Recipe(steps=20) == Recipe(optim=replace(Recipe().optim, max_steps=20))

    A key that is both a group's name and an alias (`vision="dir"` for `vision.path`) is the
    group when given a mapping or a config object, else the alias. The decorated class must
    have defaults for every field.
    """

    def decorate(cls: type[Config]) -> type[Config]:
        generated = cls.__init__

        @functools.wraps(generated)
        def __init__(self: Any, *args: Any, **values: Any) -> None:
            direct = {k: v for k, v in values.items() if _is_field_value(cls, k, v)}
            generated(self, *args, **direct)
            rest = {k: v for k, v in values.items() if k not in direct}
            # `update` rebuilds through `dataclasses.replace`, which passes every field with a
            # config object for each group: all direct, so this does not recurse.
            if rest:
                vars(self).update(vars(update(self, rest, aliases)))

        cls.__init__ = __init__  # type: ignore[method-assign]
        return cls

    return decorate


def _is_field_value(cls: type, key: str, value: Any) -> bool:
    """Whether `key=value` is a field and its value as the constructor takes it: a group takes a
    config object (a mapping is merged into the group's defaults by `update`; anything else is
    the alias of that name)."""
    if key not in field_types(cls):
        return False
    return dataclasses.is_dataclass(value) if _names_group(cls, key) else True


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain JSON-ready values (nested dicts; tuples become lists in JSON)."""
    return dataclasses.asdict(config)


def check_fields(config: Any) -> None:
    """Checks (and widens: list -> tuple, int -> float) every field of a dataclass in place;
    for `__post_init__`, so that directly constructed configs get the same checks as parsed ones.

    Raises:
        ConfigError: A field's value does not fit its annotation.
    """
    for name, annotation in field_types(type(config)).items():
        object.__setattr__(
            config, name, _convert(getattr(config, name), annotation, name, parse=False)
        )
