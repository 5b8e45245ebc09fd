"""`vlkit gap`: the modality gap of a CLIP-like model (and of an earlier one) on an image-text set.

    vlkit gap --model runs/demo/model --data captions.json --images DIR [--before INIT] --out DIR

Writes DIR/gap.json (centroid distance of the L2-normalised image and text embeddings, Liang et
al. 2022, with the centroid norms and the mean cosine of each caption with its image) and
DIR/gap.png (both modalities in one 2-D PCA projection, one panel per model); prints gap.json.
The data formats are those of `vlkit eval retrieval` (COCO captions JSON) and of `vlkit train`'s
annotation files (CSV / TSV / JSONL with image and caption columns); see
`vlkit.recipes.modality_gap_report`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vlkit.cli.arguments import int_at_least, output_directory
from vlkit.cli.errors import UsageError
from vlkit.distributed import resolve_device
from vlkit.hub.download import is_hub_id
from vlkit.recipes.modality_gap_report import modality_gap_report

__all__ = ["add_gap_parser", "gap_command"]


def add_gap_parser(commands: argparse._SubParsersAction) -> None:
    """Registers `gap` on the `vlkit` command's subparsers."""
    gap = commands.add_parser(
        "gap", help="modality gap (image/text centroid distance) with a PCA plot"
    )
    gap.add_argument("--model", required=True, help="checkpoint directory or hub id")
    gap.add_argument(
        "--data",
        required=True,
        help="COCO captions JSON, CSV/TSV/JSONL (image, caption columns) or a folder with one",
    )
    gap.add_argument("--images", default=None, help="folder the image paths are relative to "
                     "(default: the data file's folder)")  # fmt: skip
    gap.add_argument("--before", default=None, help="a checkpoint to compare with (e.g. the "
                     "model before training): drawn side by side")  # fmt: skip
    gap.add_argument("--out", required=True, help="output directory (gap.json, gap.png)")
    gap.add_argument("--max-images", type=int_at_least(1), default=None,
                     help="use the first N images and their captions")  # fmt: skip
    gap.add_argument(
        "--batch-size", type=int_at_least(1), default=64, help="images per forward pass (>= 1)"
    )
    gap.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    gap.add_argument("--overwrite", action="store_true", help="replace an existing gap.json")


def _check_model(path: str, flag: str) -> None:
    if not Path(path).is_dir() and not is_hub_id(path):  # a hub id is downloaded by load_clip
        raise UsageError(f"{flag} {path}: no such model directory")


def gap_command(args: argparse.Namespace) -> dict[str, Any]:
    """Runs `vlkit gap`; returns what gap.json holds."""
    out = output_directory(args.out, "--out")  # before any model is loaded
    if (out / "gap.json").exists() and not args.overwrite:
        raise UsageError(f"--out {out}: gap.json exists; pass --overwrite to replace it")
    _check_model(args.model, "--model")
    if args.before is not None:
        _check_model(args.before, "--before")
    if not Path(args.data).exists():
        raise UsageError(f"--data {args.data}: no such file or folder")
    if args.images is not None and not Path(args.images).is_dir():
        raise UsageError(f"--images {args.images}: no such folder")
    device = str(resolve_device(args.device, "--device"))
    return modality_gap_report(args.model, args.data, out, before=args.before,
                               images_root=args.images, max_images=args.max_images,
                               batch_size=args.batch_size, device=device,
                               overwrite=args.overwrite)  # fmt: skip
