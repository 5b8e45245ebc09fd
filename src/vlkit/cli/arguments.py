"""Checked command-line values: numbers in their allowed range, output paths of the right kind.

    parser.add_argument("--top", type=int_at_least(1))          # --top 0 -> exit 2, one line
    parser.add_argument("--top-p", type=float_range(0, 1, low_open=True))
    out = output_directory(args.out, "--out")                   # a file there -> UsageError

The numeric checks are argparse `type=` functions, so argparse itself names the flag and exits
with status 2 before any model is loaded ("argument --top: must be at least 1, got 0"). The path
checks run at the start of a command, before the work, so a mistyped `--out` costs nothing.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path

from vlkit.cli.errors import UsageError
from vlkit.overrides import describe_interval, outside_interval

__all__ = [
    "float_range",
    "int_at_least",
    "int_range",
    "output_directory",
    "output_file",
]


def int_range(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse `type` reading an int in [low, high] (either end may be open: None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                allowed = f"at least {low}"
            elif low is None:
                allowed = f"at most {high}"
            else:
                allowed = f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in some messages
    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse `type` reading an int >= `low`."""
    return int_range(low, None)


def float_range(
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
    """An argparse `type` reading a finite float in the interval low..high.

    Args:
        low, high: The bounds (None: unbounded on that side).
        low_open, high_open: Exclude the bound itself (`--temperature` must be > 0).
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if outside_interval(value, low, high, low_open, high_open):
            allowed = describe_interval(low, high, low_open, high_open)
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def output_directory(path: str | os.PathLike[str], flag: str) -> Path:
    """`path` as an output directory: refused when empty, or when it or a folder above it is a
    file.

    Raises:
        UsageError: Naming `flag` and the file in the way.
    """
    if not os.fspath(path).strip():  # Path("") is the current directory: never meant
        raise UsageError(f"{flag}: empty; name a directory ('.' for the current one)")
    directory = Path(path)
    found = _existing_ancestor(directory)
    if found == directory and not directory.is_dir():
        raise UsageError(f"{flag} {directory}: is a file, expected a directory")
    if found != directory and not found.is_dir():
        raise UsageError(f"{flag} {directory}: {found} is a file, not a directory")
    return directory


def output_file(path: str | os.PathLike[str], flag: str) -> Path:
    """`path` as an output file: refused when it is a directory or a folder above it is a file.

    Raises:
        UsageError: Naming `flag` and what is in the way.
    """
    file = Path(path)
    if file.is_dir():
        raise UsageError(f"{flag} {file}: is a directory, expected a file name")
    found = _existing_ancestor(file.parent)
    if not found.is_dir():
        raise UsageError(f"{flag} {file}: {found} is a file, not a directory")
    return file
