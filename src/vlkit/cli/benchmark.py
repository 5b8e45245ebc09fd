"""`vlkit benchmark`: standard benchmarks from disk, CLIP_benchmark-compatible results.

    vlkit benchmark --model M --tasks imagenet1k,cifar10,coco_retrieval --data-root DIR --out OUT
        [--data TASK=PATH ...] [--limit N] [--batch-size 64] [--device auto] [--workers 2]
        [--amp] [--plain-linear] [--recall-k 1,5,10] [--judge openai] [--judge-runs 1] [--resume | --overwrite]
    vlkit benchmark --list     (the tasks, their data layout and where to get it)

Writes OUT/results.jsonl (one CLIP_benchmark-style record per task), OUT/report.md and
OUT/plots/. The work is `vlkit.recipes.benchmark.run_benchmark`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vlkit.cli.arguments import int_at_least
from vlkit.cli.errors import UsageError
from vlkit.evaluation.judges import JudgeError
from vlkit.evaluation.report import json_safe
from vlkit.recipes.benchmark import BenchmarkConfig, run_benchmark
from vlkit.recipes.benchmark_tasks import TASKS

__all__ = ["add_benchmark_parser", "benchmark_command"]


def add_benchmark_parser(commands: argparse._SubParsersAction) -> None:
    """Registers `benchmark` on the `vlkit` command's subparsers."""
    bench = commands.add_parser(
        "benchmark",
        help="zero-shot / retrieval / linear-probe / VQA / caption / MM-Vet benchmarks from disk",
        description=__doc__.split("\n\n")[0],
    )
    bench.add_argument("--model", help="checkpoint directory or hub id")
    bench.add_argument("--tasks", help=f"comma-separated: {', '.join(TASKS)}")
    bench.add_argument("--data-root", help="DIR holding each dataset under its task's folder")
    bench.add_argument("--data", action="append", default=[], metavar="TASK=PATH",
                       help="read one task's data from PATH (repeatable)")  # fmt: skip
    bench.add_argument("--out", help="output directory")
    bench.add_argument("--limit", type=int_at_least(1), default=None, help="first N samples")
    bench.add_argument("--batch-size", type=int_at_least(1), default=64)
    bench.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    bench.add_argument("--workers", type=int_at_least(0), default=2,
                       help="image-decoding worker processes")  # fmt: skip
    bench.add_argument("--amp", action="store_true",
                       help="autocast as clip_benchmark does by default (bf16 CPU, fp16 CUDA)")  # fmt: skip
    bench.add_argument("--plain-linear", action="store_true",
                       help="fp32 on CPU: PyTorch's own linear kernels instead of oneDNN's "
                            "pre-packed ones (bitwise what encode_image gives; ~20%% slower)")  # fmt: skip
    bench.add_argument("--recall-k", default="1,5,10", help="K of retrieval recall@K")
    bench.add_argument("--seed", type=int, default=0, help="linear-probe seed")
    bench.add_argument("--val-proportion", type=float, default=None,
                       help="linear probe: hold out this share (0-1) of the training split to "
                            "choose the weight decay, as clip_benchmark --val_proportion")  # fmt: skip
    bench.add_argument("--judge", default="openai", help="MM-Vet judge: openai[:MODEL], local:DIR")
    bench.add_argument("--judge-runs", type=int_at_least(1), default=1)
    bench.add_argument("--resume", action="store_true", help="continue OUT: skip finished tasks")
    bench.add_argument("--overwrite", action="store_true", help="delete OUT's previous results")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench.add_argument("--list", action="store_true", help="list the tasks and their layouts")


def _data(pairs: list[str]) -> dict[str, Path]:
    data = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--data {pair!r}: expected TASK=PATH (e.g. --data cifar10=/data/c10)")
        data[name] = Path(path)
    return data


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        raise UsageError(f"--recall-k {text!r}: expected positive integers, e.g. 1,5,10")
    return ks


def benchmark_command(args: argparse.Namespace) -> Any:
    """Runs `vlkit benchmark`; returns the records (or the task list with --list)."""
    if args.list:
        return {name: {"kind": t.kind, "layout": t.layout} for name, t in TASKS.items()}
    for flag, value in (("--model", args.model), ("--tasks", args.tasks), ("--out", args.out)):
        if not value:
            raise UsageError(f"{flag} is required (see vlkit benchmark --help)")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other: pass one")
    config = BenchmarkConfig(
        model=args.model,
        tasks=args.tasks,
        out_dir=args.out,
        data_root=args.data_root,
        data=_data(args.data),
        limit=args.limit,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        amp=args.amp,
        packed_linear=not args.plain_linear,
        recall_k=_ks(args.recall_k),
        seed=args.seed,
        val_proportion=args.val_proportion,
        judge=args.judge,
        judge_runs=args.judge_runs,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    try:
        return json_safe(run_benchmark(config))
    except JudgeError as error:  # a wrong key or URL, an endpoint down: answers stay cached
        raise UsageError(f"--judge {args.judge}: {error} (rerun with --resume)") from None
