"""`vlkit audit`: zero-shot association rates and skew metrics of prompts across groups.

    vlkit audit --model M --data D.csv --attribute gender \
        --prompts "a photo of a doctor,a photo of a nurse" --out DIR \
        [--debias "a photo of a man|a photo of a woman" [--equalize "A|B;..."]] [--k 10,50,100]

The work is `vlkit.recipes.bias_audit.run_audit`; this module only converts the flags.
"""

from __future__ import annotations

import argparse
from typing import Any

from vlkit.cli.arguments import float_range, int_at_least, output_directory
from vlkit.cli.errors import UsageError
from vlkit.distributed import resolve_device
from vlkit.evaluation.debiasing import parse_prompt_pairs
from vlkit.recipes.bias_audit import AuditConfig, run_audit

__all__ = ["add_audit_parser", "audit_command"]


def add_audit_parser(commands: argparse._SubParsersAction) -> None:
    """Registers `vlkit audit` on the `vlkit` command's subparsers."""
    audit = commands.add_parser("audit", help="bias audit: prompt associations across groups")
    audit.add_argument("--model", required=True, help="CLIP-like checkpoint directory or hub id")
    audit.add_argument("--data", required=True,
                       help="CSV/TSV/JSONL with an image column and the attribute column")  # fmt: skip
    audit.add_argument("--attribute", required=True, help="column naming each image's group")
    audit.add_argument("--prompts", required=True,
                       help='comma-separated, e.g. "a photo of a doctor,a photo of a nurse"')  # fmt: skip
    audit.add_argument("--out", required=True, help="output directory")
    audit.add_argument("--root", default=None, help="image folder (default: the data file's)")
    audit.add_argument("--image-column", default="image")
    audit.add_argument("--k", default="10,50,100", help="Skew@k cut-offs, comma-separated")
    audit.add_argument("--desired", choices=("dataset", "uniform"), default="dataset",
                       help="desired group proportions for the skew metrics")  # fmt: skip
    audit.add_argument("--confidence", type=float_range(0, 1, low_open=True, high_open=True),
                       default=0.95, help="level of the intervals")  # fmt: skip
    audit.add_argument("--bootstrap", type=int_at_least(0), default=1000,
                       help="bootstrap resamples for the skew intervals (0: none)")  # fmt: skip
    audit.add_argument("--debias", default=None,
                       help='bias prompt pairs "A|B;C|D": also report with their direction '
                            "projected out of the prompts (Chuang et al. 2023)")  # fmt: skip
    audit.add_argument("--equalize", default=None,
                       help='with --debias: pairs "A|B;C|D" to map to one point (the calibrated '
                            "projection, Chuang et al. §3.2)")  # fmt: skip
    audit.add_argument("--batch-size", type=int_at_least(1), default=64)
    audit.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    audit.add_argument("--overwrite", action="store_true", help="replace an audit in --out")


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise UsageError(f"--k: expected comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise UsageError(f"--k: expected positive integers, got {text!r}")
    return ks


def audit_command(args: argparse.Namespace) -> dict[str, Any]:
    """Runs `vlkit audit`; returns the summary the CLI prints (the full audit is audit.json)."""
    output_directory(args.out, "--out")
    prompts = tuple(p.strip() for p in args.prompts.split(",") if p.strip())
    if len(prompts) < 2:
        raise UsageError(f"--prompts: give at least two comma-separated prompts, got {prompts}")
    if args.equalize and not args.debias:
        raise UsageError("--equalize needs --debias PAIRS (the bias subspace)")
    pairs: dict[str, tuple] = {}
    for flag in ("debias", "equalize"):
        text = getattr(args, flag)
        try:
            pairs[flag] = tuple(parse_prompt_pairs(text)) if text else ()
        except ValueError as error:
            raise UsageError(f"--{flag}: {error}") from None
    resolve_device(args.device, "--device")
    config = AuditConfig(
        prompts=prompts, attribute=args.attribute, image_column=args.image_column, root=args.root,
        ks=_ks(args.k), desired=args.desired, confidence=args.confidence,
        bootstrap=args.bootstrap, debias=pairs["debias"], equalize=pairs["equalize"],
        batch_size=args.batch_size, device=args.device,
    )  # fmt: skip
    result = run_audit(args.model, args.data, args.out, config, overwrite=args.overwrite)
    keys = ("max_association_gap", "mean_ndkl")
    summary: dict[str, Any] = {"out": result["out"], "groups": result["original"]["groups"],
                               "skipped": result["skipped"]}  # fmt: skip
    for part in ("original", "debiased"):
        if part in result:
            values = result[part]
            skews = {k: v for k, v in values.items() if k.startswith("mean_max_skew_at_")}
            summary[part] = {**{k: values[k] for k in keys}, **skews}
    return summary
