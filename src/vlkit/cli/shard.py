"""`vlkit data shard`: write WebDataset tar shards from an image folder + annotation file.

The arguments are parsed here; the work is `vlkit.data.shards.write_annotated_shards`.
"""

from __future__ import annotations

import argparse
from typing import Any

from vlkit.cli.arguments import int_at_least, output_directory
from vlkit.cli.data_filter import add_filter_parser, filter_command
from vlkit.data.shards import write_annotated_shards


def add_shard_parsers(commands: argparse._SubParsersAction) -> None:
    """Adds `vlkit data` with its `shard` subcommand to the top-level subparsers."""
    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    shard = data_commands.add_parser("shard", help="write WebDataset tar shards from a folder")
    shard.add_argument("--root", required=True, help="image folder")
    shard.add_argument("--annotations", required=True, help="CSV or JSONL with image + caption")
    shard.add_argument("--out", required=True, help="output directory for .tar shards")
    shard.add_argument("--samples-per-shard", type=int_at_least(1), default=1000,
                       help="samples per .tar shard (>= 1)")  # fmt: skip
    shard.add_argument("--image-column", default="image")
    shard.add_argument("--caption-column", default="caption")
    add_filter_parser(data_commands)  # `vlkit data filter` (cli/data_filter.py)


def shard_command(args: argparse.Namespace) -> dict[str, Any]:
    """Runs `vlkit data shard` (or `data filter`); returns the JSON summary the CLI prints."""
    if args.data_command == "filter":
        return filter_command(args)
    output_directory(args.out, "--out")
    return write_annotated_shards(
        args.root,
        args.annotations,
        args.out,
        samples_per_shard=args.samples_per_shard,
        image_column=args.image_column,
        caption_column=args.caption_column,
    )
