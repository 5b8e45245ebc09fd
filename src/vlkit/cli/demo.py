"""`vlkit demo`: train a small CLIP on easy-VQA in a time budget, evaluate it, print the summary.

    vlkit demo [--out runs/demo] [--seconds S]

The work is `vlkit.recipes.demo.run_demo`.
"""

from __future__ import annotations

import argparse
from typing import Any

from vlkit.cli.arguments import float_range, output_directory
from vlkit.recipes.demo import run_demo

__all__ = ["add_demo_parser", "demo_command"]


def add_demo_parser(commands: argparse._SubParsersAction) -> None:
    """Registers `demo` on the `vlkit` command's subparsers."""
    demo = commands.add_parser("demo", help="train a small CLIP on easy-VQA and evaluate it")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--seconds", type=float_range(0, low_open=True), default=None,
                      help="training time budget (> 0)")  # fmt: skip


def demo_command(args: argparse.Namespace) -> dict[str, Any]:
    """Runs `vlkit demo`; returns the demo's summary (printed as JSON)."""
    kwargs: dict[str, Any] = {"out_dir": output_directory(args.out, "--out")}
    if args.seconds is not None:  # else run_demo's own default budget
        kwargs["seconds_budget"] = args.seconds
    return run_demo(**kwargs)
