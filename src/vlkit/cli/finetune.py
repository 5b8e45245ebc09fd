"""`vlkit finetune`: supervised fine-tuning of a pretrained VLM on conversations.

    vlkit finetune --model DIR --data PATH --out RUN [--eval-data PATH]
                   [--lora r=16,alpha=32,targets=q_proj,k_proj,v_proj,o_proj] [--merge]
                   [--resume latest] [--overwrite] [key=value ...]
    vlkit finetune --out RUN --resume latest [key=value ...]   (the run's saved settings)

`--model` is a SmolVLM / Idefics3, LLaVA or composed VLM directory (or a hub id); `--data` and
`--eval-data` are LLaVA JSON, Cauldron/TRL parquet / JSONL / `save_to_disk` directories, or VQA
question/answer files. The `key=value` settings are `FinetuneConfig`'s (`lr=2e-4`,
`max_steps=300`, `batch_size=8`, `micro_batch_size=2`, `eval_every=50`, ...), checked before
anything is loaded. A fresh run into an `--out` that holds a run is refused in one line naming
`--resume` and `--overwrite`. The work is `vlkit.recipes.finetune.run_finetune`; the fine-tuned
model ends in `RUN/final`, which `vlkit generate --model RUN/final` answers with.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from vlkit.cli.arguments import output_directory
from vlkit.cli.errors import UsageError
from vlkit.cli.train import _IntermixedParser, _run_directory_error, _settings_help
from vlkit.distributed import resolve_device
from vlkit.recipes.finetune import run_finetune
from vlkit.recipes.finetune_config import CONFIG_FILE, FinetuneConfig
from vlkit.training.run_directory import RunDirectoryError

__all__ = ["add_finetune_parser", "finetune_command"]

EXAMPLES = """\
examples:
  vlkit finetune --model HuggingFaceTB/SmolVLM-256M-Instruct --data train.parquet --out runs/ft \\
      --eval-data test.parquet --lora r=16,alpha=32,targets=q_proj,k_proj,v_proj,o_proj \\
      lr=1e-4 batch_size=8 micro_batch_size=2 max_steps=500 eval_every=100 precision=bf16
  vlkit finetune --out runs/ft --resume latest          (continue a stopped run exactly)
  vlkit generate --model runs/ft/final --image x.png --prompt "What shape is this?"
RUN/final is the merged or fully fine-tuned model, or (LoRA without --merge) the peft adapter
whose adapter_config.json names its base model."""

# Flags that are settings of the run (written into finetune_config.json).
_FLAG_SETTINGS = {"model": "model", "data": "data", "out": "out_dir", "eval_data": "eval_data",
                  "lora": "lora"}  # fmt: skip


def add_finetune_parser(commands: argparse._SubParsersAction) -> None:
    """Registers `finetune` on the `vlkit` command's subparsers."""
    defaults = FinetuneConfig(model="DIR", data="PATH", out_dir="RUN")
    ft = commands.add_parser(
        "finetune",
        help="fine-tune a SmolVLM / LLaVA / composed VLM on conversations (LoRA or full)",
        description="Supervised fine-tuning on conversation data: flags, then key=value settings.",
        epilog="\n\n".join([_settings_help(defaults, "settings"), EXAMPLES]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ft.__class__ = _IntermixedParser  # key=value settings anywhere on the line
    ft.add_argument("--model", default=None, help="pretrained model directory or hub id")
    ft.add_argument("--data", default=None, help="training conversations (file or directory)")
    ft.add_argument("--out", default=None, help="the run directory")
    ft.add_argument("--eval-data", default=None, help="held-out conversations (evaluation)")
    ft.add_argument("--lora", default=None,
                    help="LoRA spec, e.g. r=16,alpha=32,targets=q_proj,v_proj")  # fmt: skip
    ft.add_argument("--merge", action="store_true",
                    help="with --lora: RUN/final is the merged model, not the adapter")  # fmt: skip
    ft.add_argument("--resume", default=None, help="'latest' or a checkpoint directory")
    ft.add_argument("--overwrite", action="store_true",
                    help="replace the run in --out (deletes its checkpoints, logs, final)")  # fmt: skip
    ft.add_argument("overrides", nargs="*", help="key=value settings (lr=2e-4, max_steps=300)")


def finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    """The run's config: the saved one when resuming (flags and settings given again replace
    its values), else defaults; then the flags, then the `key=value` settings.

    Raises:
        UsageError: A missing flag, or `--resume` with `--overwrite`.
        ConfigError: A bad setting (one line naming the key).
    """
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run that --overwrite would delete; pass one")
    if not args.out:
        raise UsageError("--out: missing; name the run directory (e.g. --out runs/finetune)")
    output_directory(args.out, "--out")
    saved = Path(args.out) / CONFIG_FILE
    if args.resume and saved.is_file():
        config = FinetuneConfig.from_json(saved)
    else:
        for flag in ("model", "data"):
            if not getattr(args, flag):
                raise UsageError(f"--{flag}: missing; vlkit finetune needs --model DIR --data "
                                 "PATH --out RUN")  # fmt: skip
        config = FinetuneConfig()
    given = {key: getattr(args, flag) for flag, key in _FLAG_SETTINGS.items()
             if getattr(args, flag) is not None}  # fmt: skip
    settings = [f"{key}={value}" for key, value in given.items()]
    if args.merge:
        settings.append("merge=true")
    for item in args.overrides:
        if "=" not in item:
            raise UsageError(f"{item!r}: expected a key=value setting (or a --flag)")
    # The LoRA spec is set whole (its commas are not a list), before `merge` is checked.
    if "lora" in given:
        config = replace(config, lora=given["lora"])
    config = config.with_overrides([s for s in settings if not s.startswith("lora=")])
    return config.with_overrides(list(args.overrides))


def finetune_command(args: argparse.Namespace) -> dict[str, Any]:
    """Runs `vlkit finetune`; returns the run summary (printed as JSON)."""
    config = finetune_config(args)
    resolve_device(config.device, "device")  # before any data or model is loaded
    if config.lora:
        from vlkit.training.lora import parse_lora_spec

        try:
            parse_lora_spec(config.lora)  # a bad spec costs nothing
        except ValueError as error:
            raise UsageError(f"--lora {config.lora}: {error}") from None
    try:
        return run_finetune(config, resume=args.resume, overwrite=args.overwrite)
    except RunDirectoryError as error:
        raise _run_directory_error(error) from None
