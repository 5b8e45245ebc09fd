"""`vlkit zeroshot` (rank labels for images) and `vlkit embed` (write embeddings to .npy).

    vlkit zeroshot IMAGE... --model PATH --labels "a cat,a dog" [--templates NAME|FILE] [--json]
    vlkit embed --model PATH (--images DIR | --texts FILE) --out FILE.npy

The work is `vlkit.inference.embed.zeroshot` and `vlkit.inference.embed.embed`.
"""

from __future__ import annotations

import argparse
import json

from vlkit.cli.errors import UsageError
from vlkit.inference.embed import embed, zeroshot

__all__ = ["add_embed_parsers", "embed_command", "zeroshot_command"]


def add_embed_parsers(commands: argparse._SubParsersAction) -> None:
    """Registers `zeroshot` and `embed` on the `vlkit` command's subparsers."""
    zs = commands.add_parser("zeroshot", help="rank labels for images")
    zs.add_argument("images", nargs="+")
    zs.add_argument("--model", required=True, help="checkpoint directory, file or hub id")
    zs.add_argument("--labels", required=True, help='comma-separated, e.g. "a cat,a dog"')
    zs.add_argument("--templates", default="none", help="openai-imagenet, cifar, none or a FILE")
    zs.add_argument("--top", type=int, default=None, help="show only the best N labels")
    zs.add_argument("--json", action="store_true", help="print JSON instead of a table")

    em = commands.add_parser("embed", help="write image or text embeddings to .npy")
    em.add_argument("--model", required=True)
    group = em.add_mutually_exclusive_group(required=True)
    group.add_argument("--images", help="directory of images")
    group.add_argument("--texts", help="text file, one text per line")
    em.add_argument("--out", required=True, help="output .npy file")


def zeroshot_command(args: argparse.Namespace) -> None:
    """Runs `vlkit zeroshot`; prints each image's ranking as a table, or JSON with `--json`."""
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if not labels:
        raise UsageError("--labels is empty: give comma-separated class names")
    results = zeroshot(args.images, args.model, labels, args.templates, args.top)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for result in results:
        print(result["image"])
        for item in result["ranking"]:
            print(f"  {item['probability']:8.4f}  {item['label']}")


def embed_command(args: argparse.Namespace) -> None:
    """Runs `vlkit embed`; prints one line saying what it wrote."""
    embeddings = embed(args.model, args.out, args.images, args.texts, what=("--images", "--texts"))
    print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to {args.out}")
