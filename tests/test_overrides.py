"""The one override parser: typed `key=value` / `group.key=value` settings for nested dataclasses."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from vlkit.overrides import (
    ConfigError,
    accepts_aliases,
    apply_overrides,
    from_dict,
    parse_value,
    to_dict,
    update,
)


@dataclass
class Inner:
    lr: float = 0.1
    steps: int | None = None
    betas: tuple[float, float] = (0.9, 0.98)


@dataclass
class Outer:
    name: str = "run"
    mode: Literal["fast", "slow"] = "fast"
    verbose: bool = False
    tags: tuple[str, ...] = ()
    sizes: list[int] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        if self.inner.lr < 0:
            raise ConfigError("inner.lr: must be >= 0")


def test_values_are_parsed_by_the_field_annotation():
    config = apply_overrides(Outer(), ["name=8", "mode=slow", "verbose=true", "tags=a,b",
                                       "sizes=[1, 2]", "inner.lr=1e-3", "inner.steps=none",
                                       "inner.betas=(0.5, 0.6)"])  # fmt: skip
    assert config == Outer("8", "slow", True, ("a", "b"), [1, 2], Inner(1e-3, None, (0.5, 0.6)))
    assert apply_overrides(config, ["inner.steps=7"]).inner == Inner(1e-3, 7, (0.5, 0.6))
    assert parse_value("0.9,0.98", tuple[float, float]) == (0.9, 0.98)
    assert parse_value("null", int | None) is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner.lrr=1", r"^unknown key 'inner.lrr' \(allowed: lr, steps, betas\); did you mean 'inner.lr'\?$"),
        ("nme=x", r"^unknown key 'nme' \(allowed: name, mode, verbose, tags, sizes, inner.\*\); did you mean 'name'\?$"),
        ("inner.steps=abc", r"^inner.steps: expected an int or none, got 'abc'$"),
        ("mode=medium", r"^mode: expected one of fast, slow, got 'medium'$"),
        ("verbose=maybe", r"^verbose: expected true or false, got 'maybe'$"),
        ("inner.betas=1,2,3", r"^inner.betas: expected comma-separated float, float, got '1,2,3'$"),
        ("inner=3", r"^inner is a group of settings, not a value \(set one of: inner.lr, "),
        ("name", r"^override 'name' is not key=value$"),
        ("inner.lr=-1", r"^inner.lr: must be >= 0$"),  # the dataclass's own checks run again
    ],
)  # fmt: skip
def test_bad_settings_raise_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Outer(), [override])


def test_dicts_round_trip_and_aliases_map_old_keys():
    config = Outer(tags=("x",), inner=Inner(steps=3))
    assert from_dict(Outer, to_dict(config)) == config  # JSON lists come back as tuples
    aliases = {"lr": "inner.lr", "inner": "inner.steps"}
    assert update(Outer(), {"lr": 0.5, "inner": 4}, aliases).inner == Inner(0.5, 4)
    assert update(Outer(), {"inner": {"lr": 0.5}}, aliases).inner == Inner(0.5)  # a group
    assert apply_overrides(Outer(), ["lr=2", "inner=5"], aliases).inner == Inner(2.0, 5)
    with pytest.raises(ConfigError, match=r"^inner.lr: expected a float, got 'fast'$"):
        update(Outer(), {"inner.lr": "fast"})


def test_accepts_aliases_lets_the_constructor_take_old_and_dotted_keys():
    @accepts_aliases({"lr": "inner.lr", "inner": "inner.steps"})
    @dataclass
    class Recipe:
        name: str = "run"
        inner: Inner = field(default_factory=lambda: Inner(lr=0.5))

    assert Recipe(lr=2) == Recipe(inner=Inner(lr=2.0))  # int -> float through the field type
    assert Recipe(inner=4).inner == Inner(0.5, 4)  # a value for a group's name: the alias
    assert Recipe(inner={"steps": 4}).inner == Inner(0.5, 4)  # a mapping merges into the default
    assert Recipe(**{"inner.betas": [1, 2]}, name="x") == Recipe("x", Inner(0.5, None, (1.0, 2.0)))
    with pytest.raises(ConfigError, match=r"^unknown key 'lrr'"):
        Recipe(lrr=1)


def test_every_float_setting_refuses_inf_and_nan():
    # The one float conversion: parsed text, values given directly, `float | None` fields, a
    # tuple's items, a JSON file's Infinity; `check_range` too, whatever its bounds.
    import math

    from vlkit.overrides import JsonField, check_json_fields, check_range
    from vlkit.training.config import TrainConfig

    for text in ("inf", "-inf", "nan", "Infinity"):
        with pytest.raises(ConfigError, match=rf"^inner.lr: must be finite, got '{text}'$"):
            apply_overrides(Outer(), [f"inner.lr={text}"])
    with pytest.raises(ConfigError, match=r"^inner.betas\[1\]: must be finite"):
        apply_overrides(Outer(), ["inner.betas=0.9,inf"])
    with pytest.raises(ConfigError, match=r"^value: must be finite"):
        parse_value("nan", float | None)  # not "expected a float or none"
    assert parse_value("1e308", float) == 1e308 and parse_value("none", float | None) is None
    with pytest.raises(ConfigError, match=r"^optim.lr: must be finite, got inf$"):
        TrainConfig(lr=math.inf)  # a directly built config gets the same check
    with pytest.raises(ConfigError, match=r"^optim.weight_decay: must be finite"):
        TrainConfig(weight_decay=math.inf)
    with pytest.raises(ConfigError, match=r"^optim.grad_clip: must be finite"):
        TrainConfig(grad_clip=math.inf)
    with pytest.raises(ConfigError, match=r"^x: must be finite, got inf$"):
        check_range("x", math.inf, 0)  # inf is >= 0: only the finiteness check catches it
    with pytest.raises(ConfigError, match=r"^f.json: eps must be finite, got Infinity$"):
        check_json_fields({"eps": math.inf}, {"eps": JsonField(float, 0)}, "f.json")
