"""`vlkit train` (contrastive CLIP / SigLIP training) and `vlkit train-vlm` (a small generative VLM).

    vlkit train [--config FILE|NAME] [key=value ...] [--resume latest|DIR] [--overwrite]
    vlkit train --default                       (TrainConfig's defaults, into runs/train)
    vlkit train-vlm kind=llava task=easy_vqa vision=RUN/checkpoints/step_00000300 out_dir=runs/vlm
    vlkit train-vlm --default                   (VLMRecipe's defaults, into runs/vlm)

Both take `key=value` overrides, checked by `vlkit.overrides` (unknown keys and wrong types are
one-line errors naming the key), anywhere on the line (`--resume latest max_steps=5`). With
nothing at all they print their help (the keys with their defaults, the built-in configs) and
exit with status 2 rather than start a default run: `--default` asks for that explicitly.
A fresh run into an `out_dir` that holds a run is refused in one line naming `--resume` and
`--overwrite` (training/run_directory.py). The work is `vlkit.recipes.clip_run.train` and
`vlkit.recipes.vlm_run.train_vlm`.
"""

from __future__ import annotations

import argparse
import ast
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlkit import configs
from vlkit.cli.arguments import output_directory
from vlkit.cli.errors import UsageError
from vlkit.distributed import resolve_device
from vlkit.overrides import apply_overrides, to_dict
from vlkit.recipes.clip_run import train
from vlkit.recipes.vlm_run import VLMRecipe, train_vlm
from vlkit.training.config import TrainConfig
from vlkit.training.config_files import load_train_config
from vlkit.training.run_directory import RunDirectoryError
from vlkit.training.vlm_recipe import VLM_FLAT_KEYS

__all__ = ["add_train_parser", "add_train_vlm_parser", "train_command", "train_vlm_command"]

VLM_OUT_DIR = "runs/vlm"  # train-vlm's out_dir when none is given


class _IntermixedParser(argparse.ArgumentParser):
    """Reads `key=value` settings anywhere among the options (`a=1 --resume latest b=2`).

    Plain argparse reads one block of positionals only, so settings after an option are
    "unrecognized arguments"; `parse_known_intermixed_args` reads them all (it calls
    `parse_known_args` itself, hence the guard).
    """

    _intermixing = False

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _spelled(value: Any) -> str:
    """A value as it is typed on the command line (true, none, 0.9,0.98)."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, list | tuple):
        return ",".join(_spelled(item) for item in value)
    return str(value)


def _settings_help(config: Any, title: str) -> str:
    """The settings of the dataclass `config` with their defaults, one line per group."""
    lines = [f"{title} (key=value; the defaults shown):"]
    top = []
    for key, value in to_dict(config).items():
        if isinstance(value, dict):
            values = "  ".join(f"{k}={_spelled(v)}" for k, v in value.items())
            lines.append(textwrap.fill(values, 96, initial_indent=f"  {key}.  ",
                                       subsequent_indent=" " * (len(key) + 5)))  # fmt: skip
        else:
            top.append(f"{key}={_spelled(value)}")
    top_lines = textwrap.fill("  ".join(top), 96, initial_indent="  ", subsequent_indent="  ")
    return "\n".join([lines[0], top_lines, *lines[1:]])


def _builtin_configs_help() -> str:
    """The built-in configs of vlkit/configs/ with their docstrings' first lines."""
    lines = ["built-in configs (--config NAME):"]
    for path in sorted(Path(configs.__file__).parent.glob("*.py")):
        if path.name.startswith("_"):
            continue
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        lines.append(f"  {path.stem:24s}{docstring.splitlines()[0] if docstring else ''}")
    return "\n".join(lines)


TRAIN_EXAMPLES = """\
examples:
  vlkit train --config easy_vqa_clip out_dir=runs/easy_vqa
  vlkit train model=tiny data.source=shapes optim.max_steps=100 out_dir=runs/tiny
  vlkit train --config easy_vqa_clip out_dir=runs/easy_vqa --resume latest max_steps=600
  vlkit train --default                      (every default, into runs/train)
A fresh run into an out_dir that holds a run stops: --resume latest continues it, --overwrite
deletes its files (checkpoints/, metrics.jsonl, summary.json, train_config.json, tensorboard/,
training_curves.png; nothing else) and starts over."""

TRAIN_VLM_EXAMPLES = f"""\
examples:
  vlkit train-vlm kind=llava task=easy_vqa vision=runs/demo/model out_dir=runs/llava
  vlkit train-vlm kind=qformer task=scene_captions steps=300 out_dir=runs/qformer
  vlkit train-vlm --default                  (every default, a random tower, into {VLM_OUT_DIR})
out_dir=DIR (default {VLM_OUT_DIR}) is where the run goes. An out_dir that holds a run stops;
--overwrite deletes that run's files (model, configs, stage checkpoints, logs; nothing else)."""


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    """Registers `train` on the `vlkit` command's subparsers."""
    tr = commands.add_parser(
        "train",
        help="contrastive training (torchrun for several processes)",
        description="Contrastive CLIP / SigLIP training: a config, then key=value settings.",
        epilog="\n\n".join(
            [_settings_help(TrainConfig(), "settings"), _builtin_configs_help(), TRAIN_EXAMPLES]
        ),  # fmt: skip
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.__class__ = _IntermixedParser  # add_parser has no per-parser class argument
    tr.add_argument("--config", default=None, help="JSON/Python config file or built-in name")
    tr.add_argument(
        "overrides", nargs="*", help="key=value settings over the config (optim.lr=1e-3, ...)"
    )
    tr.add_argument("--resume", default=None, help="'latest' or a checkpoint directory")
    tr.add_argument("--overwrite", action="store_true",
                    help="replace the run in out_dir (deletes its checkpoints and logs)")  # fmt: skip
    tr.add_argument("--default", action="store_true",
                    help="train with every default (nothing given prints this help)")  # fmt: skip
    tr.set_defaults(print_help=tr.print_help)


def add_train_vlm_parser(commands: argparse._SubParsersAction) -> None:
    """Registers `train-vlm` on the `vlkit` command's subparsers."""
    tv = commands.add_parser(
        "train-vlm",
        help="train a small generative VLM (fusion recipe)",
        description="Train a small generative VLM: VLMRecipe key=value settings and out_dir=DIR.",
        epilog="\n\n".join([_settings_help(VLMRecipe(), "recipe settings"), TRAIN_VLM_EXAMPLES]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tv.__class__ = _IntermixedParser
    tv.add_argument("overrides", nargs="*", help="VLMRecipe key=value settings, and out_dir=DIR")
    tv.add_argument("--overwrite", action="store_true",
                    help="replace the run in out_dir (deletes its files)")  # fmt: skip
    tv.add_argument("--default", action="store_true",
                    help="train with every default (nothing given prints this help)")  # fmt: skip
    tv.set_defaults(print_help=tv.print_help)


def _nothing_given(args: argparse.Namespace, command: str) -> UsageError:
    """Prints the command's help; the error that ends it (status 2, no run started)."""
    args.print_help(sys.stderr)
    return UsageError(f"{command}: no settings given (the help above lists them); --default "
                      "trains with every default")  # fmt: skip


def _run_directory_error(error: RunDirectoryError) -> UsageError:
    """The library's error in the command's words (flags rather than parameters); `--resume`
    only where it would work (a run killed before its first checkpoint has nothing to resume)."""
    if error.resumable:
        hint = "; continue it with --resume latest,"
    elif error.resumable is False:
        hint = ", but it holds no checkpoint to resume (it stopped before its first one);"
    else:  # train-vlm: no resume
        hint = ";"
    return UsageError(
        f"out_dir {error.out_dir} already holds a run ({', '.join(error.found)}){hint} "
        "replace it with --overwrite (deletes those files), or choose another out_dir"
    )


def train_command(args: argparse.Namespace) -> dict[str, Any]:
    """Runs `vlkit train`; returns the run summary (printed as JSON)."""
    if not (args.config or args.overrides or args.resume or args.default):
        raise _nothing_given(args, "train")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run that --overwrite would delete; pass one")
    config = load_train_config(args.config, args.overrides)
    resolve_device(config.device, "device")  # H7: before any data or model is built
    output_directory(config.out_dir, "out_dir")
    try:
        return train(config, resume=args.resume, overwrite=args.overwrite)
    except RunDirectoryError as error:
        raise _run_directory_error(error) from None


def train_vlm_command(args: argparse.Namespace) -> dict[str, Any]:
    """Runs `vlkit train-vlm key=value ...`; returns the run summary (printed as JSON).

    The settings are `VLMRecipe` keys (`optim.lr=1e-3`, or the flat keys of `VLM_FLAT_KEYS` such
    as `lr=1e-3`) plus `out_dir` (default runs/vlm), which is where the run goes, not a setting.
    """
    if not (args.overrides or args.default):
        raise _nothing_given(args, "train-vlm")
    out_dir = VLM_OUT_DIR
    settings = []
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if sep and key.strip() == "out_dir":
            out_dir = value
        else:
            settings.append(item)
    recipe = apply_overrides(VLMRecipe(), settings, VLM_FLAT_KEYS)
    resolve_device(recipe.device, "device")  # H7: before any data or model is built
    output_directory(out_dir, "out_dir")
    try:
        return train_vlm(recipe, out_dir, overwrite=args.overwrite)
    except RunDirectoryError as error:
        raise _run_directory_error(error) from None
