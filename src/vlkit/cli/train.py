"""`vlkit train` (contrastive CLIP / SigLIP training) and `vlkit train-vlm` (a small generative VLM).

    vlkit train [--config FILE|NAME] [key=value ...] [--resume latest|DIR]
    vlkit train-vlm kind=llava task=easy_vqa vision=RUN/checkpoints/step_00000300 out_dir=runs/vlm

Both take `key=value` overrides, checked by `vlkit.overrides` (unknown keys and wrong types are
one-line errors naming the key). The work is `vlkit.recipes.clip_run.train` and
`vlkit.recipes.vlm_run.train_vlm`.
"""

from __future__ import annotations

import argparse
from typing import Any

from vlkit.overrides import apply_overrides
from vlkit.recipes.clip_run import train
from vlkit.recipes.vlm_run import VLMRecipe, train_vlm
from vlkit.training.config import load_train_config
from vlkit.training.vlm_recipe import VLM_FLAT_KEYS

__all__ = ["add_train_parser", "add_train_vlm_parser", "train_command", "train_vlm_command"]


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    """Registers `train` on the `vlkit` command's subparsers."""
    tr = commands.add_parser("train", help="contrastive training (torchrun for several processes)")
    tr.add_argument("--config", default=None, help="JSON/Python config file or built-in name")
    tr.add_argument(
        "overrides", nargs="*", help="key=value settings over the config (optim.lr=1e-3, ...)"
    )
    tr.add_argument("--resume", default=None, help="'latest' or a checkpoint directory")


def add_train_vlm_parser(commands: argparse._SubParsersAction) -> None:
    """Registers `train-vlm` on the `vlkit` command's subparsers."""
    tv = commands.add_parser("train-vlm", help="train a small generative VLM (fusion recipe)")
    tv.add_argument("overrides", nargs="*", help="VLMRecipe key=value settings, and out_dir=DIR")


def train_command(args: argparse.Namespace) -> dict[str, Any]:
    """Runs `vlkit train`; returns the run summary (printed as JSON)."""
    return train(load_train_config(args.config, args.overrides), resume=args.resume)


def train_vlm_command(args: argparse.Namespace) -> dict[str, Any]:
    """Runs `vlkit train-vlm key=value ...`; returns the run summary (printed as JSON).

    The settings are `VLMRecipe` keys (`optim.lr=1e-3`, or the flat keys of `VLM_FLAT_KEYS` such
    as `lr=1e-3`) plus `out_dir` (default runs/vlm), which is where the run goes, not a setting.
    """
    out_dir = "runs/vlm"
    settings = []
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if sep and key.strip() == "out_dir":
            out_dir = value
        else:
            settings.append(item)
    return train_vlm(apply_overrides(VLMRecipe(), settings, VLM_FLAT_KEYS), out_dir)
