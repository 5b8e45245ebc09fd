"""`vlkit zeroshot` (rank labels for images) and `vlkit embed` (write embeddings to .npy).

    vlkit zeroshot IMAGE... --model PATH --labels "a cat,a dog" [--templates NAME|FILE] [--json]
                   [--temperature T]   (probabilities from cos / T: the course's tau sweep)
    vlkit embed --model PATH (--images DIR | --texts FILE) --out FILE.npy [--strict]
    (both: [--image-size N] to encode at N x N with interpolated position embeddings, ViT towers)

The work is `vlkit.inference.embed.zeroshot` and `vlkit.inference.embed.embed`. `embed` shows a
progress bar and skips images that cannot be read, with a warning naming each and a count at the
end (`--strict`: stop at the first instead).
"""

from __future__ import annotations

import argparse
import json
import sys

from vlkit.cli.arguments import float_range, int_at_least, output_file
from vlkit.cli.errors import UsageError
from vlkit.distributed import resolve_device
from vlkit.inference.embed import embed, embeddings_path, zeroshot

__all__ = ["add_embed_parsers", "embed_command", "zeroshot_command"]

IMAGE_SIZE_HELP = "encode images at N x N pixels: ViT towers, interpolated position embeddings"


def add_embed_parsers(commands: argparse._SubParsersAction) -> None:
    """Registers `zeroshot` and `embed` on the `vlkit` command's subparsers."""
    zs = commands.add_parser("zeroshot", help="rank labels for images")
    zs.add_argument("images", nargs="+")
    zs.add_argument("--model", required=True, help="checkpoint directory, file or hub id")
    zs.add_argument("--labels", required=True, help='comma-separated, e.g. "a cat,a dog"')
    zs.add_argument("--templates", default="none", help="openai-imagenet, cifar, none or a FILE")
    zs.add_argument(
        "--top", type=int_at_least(1), default=None, help="show the best N labels (N >= 1)"
    )
    zs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    zs.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    zs.add_argument("--image-size", type=int_at_least(1), default=None, help=IMAGE_SIZE_HELP)
    zs.add_argument("--temperature", type=float_range(0, low_open=True), default=None,
                    help="probabilities from cos / T instead of the model's learned scale "
                    "(T > 0, e.g. 0.01 / 0.07 / 0.5; the ranking stays)")  # fmt: skip

    em = commands.add_parser("embed", help="write image or text embeddings to .npy")
    em.add_argument("--model", required=True, help="checkpoint directory, file or hub id")
    group = em.add_mutually_exclusive_group(required=True)
    group.add_argument("--images", help="directory of images")
    group.add_argument("--texts", help="text file, one text per line")
    em.add_argument("--out", required=True, help="output .npy file (.npy is added if missing)")
    em.add_argument(
        "--batch-size", type=int_at_least(1), default=64, help="images per forward pass (>= 1)"
    )
    em.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    em.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    em.add_argument("--image-size", type=int_at_least(1), default=None, help=IMAGE_SIZE_HELP)


def warn_skipped(path: str, reason: str) -> None:
    """Prints the one-line warning for an image that `embed` / `index` skip."""
    print(f"vlkit: warning: skipped {reason.removeprefix('cannot load image ')}", file=sys.stderr)


def zeroshot_command(args: argparse.Namespace) -> None:
    """Runs `vlkit zeroshot`; prints each image's ranking as a table, or JSON with `--json`."""
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if not labels:
        raise UsageError("--labels is empty: give comma-separated class names")
    device = resolve_device(args.device, "--device")  # before the model loads
    results = zeroshot(args.images, args.model, labels, args.templates, args.top, device,
                       image_size=args.image_size, temperature=args.temperature)  # fmt: skip
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for result in results:
        print(result["image"])
        for item in result["ranking"]:
            print(f"  {item['probability']:8.4f}  {item['label']}")


def embed_command(args: argparse.Namespace) -> None:
    """Runs `vlkit embed`; prints one line saying what it wrote."""
    output_file(args.out, "--out")  # a directory there is a mistake, not DIR.npy beside it
    out = output_file(embeddings_path(args.out), "--out")
    device = resolve_device(args.device, "--device")
    skipped: list[str] = []

    def on_skip(path: str, reason: str) -> None:
        skipped.append(path)
        warn_skipped(path, reason)

    embeddings = embed(args.model, args.out, args.images, args.texts, ("--images", "--texts"),
                       device, args.batch_size, args.strict, progress=True, on_skip=on_skip,
                       image_size=args.image_size)  # fmt: skip
    print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to {out} "
          f"(row names: {out.with_suffix('.json')})")  # fmt: skip
    if skipped:
        print(f"vlkit: warning: skipped {len(skipped)} unreadable image(s)", file=sys.stderr)
