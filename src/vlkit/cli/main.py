"""The `vlkit` command line. It parses arguments and calls typed library functions.

    vlkit demo [--out runs/demo]
    vlkit train [--config FILE|NAME] [key=value ...] [--resume latest|DIR]
    vlkit data shard --root DIR --annotations FILE --out DIR [--samples-per-shard N]
    vlkit data filter --model M --data CSV_OR_SHARDS --min-score S --out OUT   (CLIP-score filtering)
    vlkit audit --model M --data D.csv --attribute COLUMN --prompts "a,b" --out DIR [--debias "A|B"]
    vlkit zeroshot IMAGE... --model PATH --labels "a cat,a dog" [--templates NAME|FILE] [--json]
    vlkit embed --model PATH (--images DIR | --texts FILE) --out FILE.npy
    vlkit eval zeroshot|retrieval|vqa|captions ... --out DIR   (metrics.json + report.md + plot)
    vlkit gap --model M --data CAPTIONS_OR_CSV [--before M0] --out DIR   (modality gap + PCA plot)
    vlkit train-vlm kind=llava task=easy_vqa vision=CLIP_CHECKPOINT out_dir=DIR [key=value ...]
    vlkit finetune --model DIR --data PATH --out RUN [--eval-data PATH] [--lora SPEC] [key=value ...]
    vlkit benchmark --model M --tasks imagenet1k,cifar10,coco_retrieval --data-root DIR --out OUT
    vlkit generate --model DIR --image X [--image Y] [--video FRAMES_DIR] --prompt "..." [--int8]
    vlkit index --model PATH --images DIR --out INDEX_DIR [--kind flat|ivf|hnsw]
    vlkit search --index INDEX_DIR (--text "..." | --image FILE) [--k 5] [--json]
    vlkit explain --model PATH --image FILE --text "..." [--text "..."] --out OUT.png   (ViT relevance)
    vlkit similarity --model PATH --images FILE... --texts "a,b,c" --out OUT.png
    vlkit export --model PATH --out DIR [--opset N] [--no-normalize]   (ONNX, checked with onnxruntime)
    vlkit serve [--model PATH] [--index DIR] [--vlm RUN_OR_SMOLVLM_DIR] [--host 127.0.0.1] [--port 8000]

Each command is a module of `vlkit.cli` that defines its subparser (`add_*_parser(s)`) and its
handler; this module builds the `vlkit` parser from them and dispatches through `HANDLERS`.
Bad input (missing or unreadable image, unsupported checkpoint, bad arguments: `UsageError`;
the library raises ValueError subclasses naming the key, flag or file, and OSError for files it
cannot write) prints one line naming the problem and exits with status 2. `--debug` (anywhere
before or after the command) or the environment variable VLKIT_DEBUG=1 prints the traceback
as well.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from vlkit.cli.audit import add_audit_parser, audit_command
from vlkit.cli.benchmark import add_benchmark_parser, benchmark_command
from vlkit.cli.demo import add_demo_parser, demo_command
from vlkit.cli.embed import add_embed_parsers, embed_command, zeroshot_command
from vlkit.cli.errors import UsageError
from vlkit.cli.evaluate import add_eval_parser, eval_command
from vlkit.cli.export import add_export_parser, export_command
from vlkit.cli.finetune import add_finetune_parser, finetune_command
from vlkit.cli.gap import add_gap_parser, gap_command
from vlkit.cli.generate import add_generate_parser, generate_command
from vlkit.cli.index import add_index_parsers, index_command, print_search
from vlkit.cli.serve import add_serve_parser, serve_command
from vlkit.cli.shard import add_shard_parsers, shard_command
from vlkit.cli.train import add_train_parser, add_train_vlm_parser, train_command, train_vlm_command
from vlkit.cli.viz import add_viz_parsers, explain_command, similarity_command
from vlkit.training.trainer import TrainingDiverged

__all__ = ["HANDLERS", "UsageError", "build_parser", "main"]

Handler = Callable[[argparse.Namespace], object]  # what it returns is not printed


def build_parser() -> argparse.ArgumentParser:
    """The `vlkit` parser: one subcommand per `vlkit.cli` module, in the order `--help` lists."""
    parser = argparse.ArgumentParser(prog="vlkit", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_demo_parser(commands)
    add_train_parser(commands)
    add_shard_parsers(commands)
    add_embed_parsers(commands)
    add_eval_parser(commands)
    add_gap_parser(commands)
    add_generate_parser(commands)
    add_train_vlm_parser(commands)
    add_finetune_parser(commands)
    add_benchmark_parser(commands)
    add_audit_parser(commands)
    add_export_parser(commands)
    add_index_parsers(commands)
    add_viz_parsers(commands)
    add_serve_parser(commands)
    _add_debug_flag(parser)
    return parser


def _add_debug_flag(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """`--debug` on the `vlkit` parser and on every subcommand's, so it works in either place."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,  # a subcommand's default keeps vlkit's
        # Listed once, in `vlkit --help`; the subcommands accept it without cluttering usage.
        help="print the full traceback of an error (also: VLKIT_DEBUG=1)"
        if top
        else argparse.SUPPRESS,
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _add_debug_flag(subparser, top=False)


def _one_line(error: BaseException) -> str:
    """The message the CLI prints: an OSError as 'FILE: reason', anything else its first line."""
    if isinstance(error, OSError) and error.strerror:
        names = [str(n) for n in (error.filename, error.filename2) if n is not None]
        return ": ".join([" -> ".join(names), error.strerror] if names else [error.strerror])
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _debugging(args: argparse.Namespace) -> bool:
    return args.debug or os.environ.get("VLKIT_DEBUG", "") not in ("", "0")


def _prints_json(command: Callable[[argparse.Namespace], Any]) -> Handler:
    """A handler that runs `command` and prints its result as indented JSON."""

    def handler(args: argparse.Namespace) -> None:
        print(json.dumps(command(args), indent=2))

    return handler


# Each handler prints the command's output itself.
HANDLERS: dict[str, Handler] = {
    "demo": _prints_json(demo_command),
    "train": _prints_json(train_command),
    "data": _prints_json(shard_command),
    "zeroshot": zeroshot_command,
    "embed": embed_command,
    "eval": _prints_json(eval_command),
    "gap": _prints_json(gap_command),
    "generate": generate_command,  # streams the tokens as they come
    "train-vlm": _prints_json(train_vlm_command),
    "finetune": _prints_json(finetune_command),
    "benchmark": _prints_json(benchmark_command),
    "audit": _prints_json(audit_command),
    "export": _prints_json(export_command),
    "index": _prints_json(index_command),
    "search": print_search,
    "explain": _prints_json(explain_command),
    "similarity": _prints_json(similarity_command),
    "serve": serve_command,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `vlkit ARGS`; returns the exit status (2: bad input, 1: training diverged,
    130: interrupted)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or argparse's own usage error (2), already printed
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    try:
        HANDLERS[args.command](args)
    except (ValueError, OSError, ImportError) as error:
        # ValueError: UsageError, ConfigError, CheckpointError, ImageLoadError and the library's
        # checks; OSError: a file that cannot be read or written; ImportError: a missing extra.
        if _debugging(args):
            traceback.print_exc()
        print(f"vlkit: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        if _debugging(args):
            traceback.print_exc()
        print(f"vlkit: training stopped: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vlkit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
