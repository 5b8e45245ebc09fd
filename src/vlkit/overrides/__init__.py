"""Typed settings for (nested) dataclass configs: the one parser of `key=value` overrides
(`parsing`) and the value checks for configs and config files (`checks`).

    config = apply_overrides(TrainConfig(), ["optim.lr=1e-3", "precision=bf16"])
    config = from_dict(TrainConfig, json.loads(text), aliases=FLAT_KEYS)

This package sits at the ground floor: it knows no model, no checkpoint and no command line.
"""

from vlkit.overrides.checks import (
    JsonField,
    check_json_fields,
    check_json_types,
    check_range,
    describe_interval,
    outside_interval,
)
from vlkit.overrides.parsing import (
    ConfigError,
    accepts_aliases,
    apply_overrides,
    check_fields,
    field_types,
    from_dict,
    parse_value,
    to_dict,
    update,
)

__all__ = [
    "ConfigError",
    "JsonField",
    "accepts_aliases",
    "apply_overrides",
    "check_fields",
    "check_json_fields",
    "check_json_types",
    "check_range",
    "describe_interval",
    "field_types",
    "from_dict",
    "outside_interval",
    "parse_value",
    "to_dict",
    "update",
]
