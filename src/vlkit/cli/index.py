"""`vlkit index` and `vlkit search`: build a faiss index of a folder of images, then search it.

    vlkit index --model CLIP_DIR --images photos/ --out photos.index [--kind flat|ivf|hnsw]
    vlkit search --index photos.index --text "a dog on a beach" [--k 5] [--templates NAME]
    vlkit search --index photos.index --image query.jpg --json

The index remembers the model that built it (`--model` overrides it, e.g. after moving the
checkpoint). `--templates` turns a text query into a prompt ensemble, as zero-shot
classification does. Scores are cosine similarities. `index` shows a progress bar and skips
images that cannot be read, with a warning naming each and their count in the summary
(`--strict`: stop at the first instead).
"""

from __future__ import annotations

import argparse
import json
import sys

from vlkit.cli.arguments import int_at_least, output_directory
from vlkit.cli.embed import warn_skipped
from vlkit.cli.errors import UsageError
from vlkit.data.images import load_image
from vlkit.distributed import resolve_device
from vlkit.inference.image_search import ImageSearcher, build_image_index

__all__ = [
    "add_index_parsers",
    "format_search_results",
    "index_command",
    "print_search",
    "search_command",
]


def add_index_parsers(commands: argparse._SubParsersAction) -> None:
    """Registers `index` and `search` on the `vlkit` command's subparsers."""
    ix = commands.add_parser("index", help="embed a folder of images into a searchable index")
    ix.add_argument("--model", required=True, help="CLIP/SigLIP checkpoint directory or hub id")
    ix.add_argument("--images", required=True, help="image folder (searched recursively)")
    ix.add_argument("--out", required=True, help="output index directory")
    ix.add_argument("--kind", default="flat", choices=["flat", "ivf", "hnsw"],
                    help="flat: exact; ivf, hnsw: approximate, for large folders")  # fmt: skip
    ix.add_argument(
        "--batch-size", type=int_at_least(1), default=64, help="images per forward pass (>= 1)"
    )
    ix.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    ix.add_argument("--strict", action="store_true", help="stop at the first unreadable image")

    se = commands.add_parser("search", help="search an image index by text or by image")
    se.add_argument("--index", required=True, help="index directory written by `vlkit index`")
    query = se.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="text query")
    query.add_argument("--image", help="query image file")
    se.add_argument("--k", type=int_at_least(1), default=5, help="number of results (>= 1)")
    se.add_argument("--model", default=None, help="model (default: the one that built the index)")
    se.add_argument("--templates", default="none", help="openai-imagenet, cifar, none or a FILE")
    se.add_argument("--json", action="store_true", help="print JSON instead of a table")


def index_command(args: argparse.Namespace) -> dict:
    """Runs `vlkit index`; returns a summary (index directory, size, dim, kind, model, and the
    number of unreadable images skipped)."""
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be at least 1")
    output_directory(args.out, "--out")
    device = resolve_device(args.device, "--device")
    index = build_image_index(args.model, args.images, args.out, args.kind, args.batch_size,
                              device, args.strict, progress=True, on_skip=warn_skipped,
                              what="--images")  # fmt: skip
    skipped = len(index.metadata.get("skipped", []))
    if skipped:
        print(f"vlkit: warning: skipped {skipped} unreadable image(s)", file=sys.stderr)
    return {"index": str(args.out), "images": len(index), "dim": index.dim, "kind": index.kind,
            "model": index.metadata["model"], "skipped": skipped}  # fmt: skip


def search_command(args: argparse.Namespace) -> list[dict]:
    """Runs `vlkit search`; returns the hits, best first: rank, name, score, position."""
    if (args.text is None) == (args.image is None):
        raise UsageError("give exactly one of --text or --image")
    if args.k < 1:
        raise UsageError(f"--k {args.k}: must be at least 1")
    # Loaded before the index so a bad file fails fast; the decoded mode is kept so the model's
    # transform converts it as the checkpoint's reference does.
    image = None if args.image is None else load_image(args.image, keep_mode=True)
    searcher = ImageSearcher.from_directory(args.index, args.model, args.templates)
    if image is not None:
        hits = searcher.search_image(image, args.k)
    else:
        hits = searcher.search_text(args.text, args.k)
    return [{"rank": rank, "name": hit.name, "score": hit.score, "position": hit.position}
            for rank, hit in enumerate(hits, start=1)]  # fmt: skip


def print_search(args: argparse.Namespace) -> None:
    """Runs `vlkit search` and prints the hits (`format_search_results`)."""
    print(format_search_results(search_command(args), as_json=args.json))


def format_search_results(results: list[dict], as_json: bool = False) -> str:
    """What `vlkit search` prints: JSON (`--json`) or one `score  name` line per hit."""
    if as_json:
        return json.dumps(results, indent=2)
    return "\n".join(f"{item['rank']:3d}  {item['score']:7.4f}  {item['name']}" for item in results)
