"""`vlkit data filter`: CLIP-score filtering of an annotation file or a shard set.

    vlkit data filter --model M --data CSV_OR_SHARDS --min-score 0.28 --out OUT

The work is `vlkit.recipes.data_filter.filter_by_clip_score`; this module converts the flags.
"""

from __future__ import annotations

import argparse
from typing import Any

from vlkit.cli.arguments import float_range, int_at_least, output_directory
from vlkit.distributed import resolve_device
from vlkit.recipes.data_filter import filter_by_clip_score

__all__ = ["add_filter_parser", "filter_command"]


def add_filter_parser(data_commands: argparse._SubParsersAction) -> None:
    """Adds `filter` to the subcommands of `vlkit data`."""
    parser = data_commands.add_parser(
        "filter", help="keep image-text pairs whose CLIP score reaches --min-score"
    )
    parser.add_argument("--model", required=True, help="CLIP-like checkpoint directory or hub id")
    parser.add_argument("--data", required=True,
                        help="CSV/TSV/JSONL annotation file, or a shard folder / brace pattern")  # fmt: skip
    parser.add_argument("--min-score", type=float_range(-1, 1), required=True,
                        help="keep pairs with image-caption cosine similarity >= this")  # fmt: skip
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--root", default=None, help="image folder (default: the data file's)")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--samples-per-shard", type=int_at_least(1), default=1000)
    parser.add_argument("--batch-size", type=int_at_least(1), default=64)
    parser.add_argument("--bins", type=int_at_least(1), default=20, help="histogram bins")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--overwrite", action="store_true", help="replace a filter's output")


def filter_command(args: argparse.Namespace) -> dict[str, Any]:
    """Runs `vlkit data filter`; returns its report without the histogram (in the file)."""
    output_directory(args.out, "--out")
    resolve_device(args.device, "--device")
    report = filter_by_clip_score(
        args.model, args.data, args.out, args.min_score, root=args.root,
        image_column=args.image_column, caption_column=args.caption_column,
        samples_per_shard=args.samples_per_shard, batch_size=args.batch_size, bins=args.bins,
        device=args.device, overwrite=args.overwrite,
    )  # fmt: skip
    return {k: v for k, v in report.items() if k != "histogram"}
