"""`vlkit serve`: the web app (zero-shot, image search, VQA / captions) on one machine.

    vlkit serve [--model PATH] [--index DIR] [--vlm RUN_OR_SMOLVLM_DIR] [--host H] [--port N]
                [--onnx-variant fp32|int8|q4] [--max-upload-mb MB] [--max-megapixels MP]
                [--max-concurrent N] [--max-queue N] [--max-prompts N] [--allowed-host NAME]...
                [--auth-token TOKEN]

The app is `vlkit.serve.create_app`; fastapi and uvicorn are the optional `serve` extra. The
limits are `vlkit.serve.ServeLimits` (see serve/limits.py for what each one prevents).
`--onnx-variant` picks which files of an ONNX export (`vlkit export --format onnx`) `--vlm` runs,
as in `vlkit generate`; it is checked against the export's files before the server starts.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vlkit.cli.errors import UsageError
from vlkit.inference.onnx_vlm import ONNX_VARIANTS, onnx_vlm_files
from vlkit.inference.onnx_vlm_pipeline import OnnxVLMPipeline

__all__ = ["add_serve_parser", "serve_command"]

TOKEN_ENV = "VLKIT_AUTH_TOKEN"


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    """Registers `serve` on the `vlkit` command's subparsers."""
    sv = commands.add_parser("serve", help="web app: zero-shot, image search, VQA / captions")
    sv.add_argument("--model", default=None, help="CLIP-like checkpoint directory or hub id")
    sv.add_argument("--index", default=None, help="image index directory from `vlkit index`")
    sv.add_argument("--vlm", default=None, help="train-vlm run dir or SmolVLM dir (generation)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--templates", default="none", help="template set for text search queries")
    sv.add_argument("--onnx-variant", choices=list(ONNX_VARIANTS), default=None,
                    help="which files of an ONNX export --vlm runs (default fp32)")  # fmt: skip
    limits = sv.add_argument_group("limits and safety")
    limits.add_argument("--max-upload-mb", type=float, default=32.0,
                        help="largest request body in MB (default 32)")  # fmt: skip
    limits.add_argument("--max-megapixels", type=float, default=40.0,
                        help="largest decoded image; bigger JPEGs are decoded at 1/2-1/8 scale, "
                        "other formats refused (default 40)")  # fmt: skip
    limits.add_argument("--max-concurrent", type=int, default=None,
                        help="model calls at once (default: cores, at most 4)")  # fmt: skip
    limits.add_argument("--max-queue", type=int, default=32,
                        help="requests waiting beyond those; more get 503 (default 32)")  # fmt: skip
    limits.add_argument("--max-prompts", type=int, default=2000,
                        help="zero-shot labels x templates per request (default 2000)")  # fmt: skip
    limits.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a Host name clients may use besides the bound address and "
                        "localhost (repeatable; '*' allows any)")  # fmt: skip
    limits.add_argument("--auth-token", default=None,
                        help=f"secret every API request must carry (default: ${TOKEN_ENV})")  # fmt: skip


def serve_limits(args: argparse.Namespace) -> object:
    """The `ServeLimits` the flags ask for; UsageError names a flag out of range."""
    from vlkit.serve.limits import ServeLimits, default_max_concurrent

    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: must be between 1 and 65535")
    for flag, value, least in (
        ("--max-upload-mb", args.max_upload_mb, 0.001),
        ("--max-megapixels", args.max_megapixels, 0.001),
        ("--max-concurrent", args.max_concurrent or 1, 1),
        ("--max-queue", args.max_queue, 0),
        ("--max-prompts", args.max_prompts, 1),
    ):
        if not value >= least:  # also refuses nan
            raise UsageError(f"{flag} {value}: must be at least {least:g}")
    token = args.auth_token if args.auth_token is not None else os.environ.get(TOKEN_ENV) or None
    if token is not None and not token.strip():
        raise UsageError("--auth-token is empty")
    return ServeLimits(
        max_upload_bytes=int(args.max_upload_mb * 1e6),
        max_pixels=int(args.max_megapixels * 1e6),
        max_concurrent=args.max_concurrent or default_max_concurrent(),
        max_queue=args.max_queue,
        max_prompts=args.max_prompts,
        allowed_hosts=tuple(args.allowed_host),
        auth_token=token,
    )


def check_onnx_variant(vlm: str | None, variant: str) -> None:
    """Raises UsageError (naming --onnx-variant) unless `vlm` is an ONNX export with `variant`'s
    files. Nothing is downloaded: a hub id is fetched without its onnx/ folder, so it is never
    an export."""
    hint = OnnxVLMPipeline.directory_hint
    if vlm is None:
        raise UsageError(f"--onnx-variant needs --vlm: {hint}")
    directory = Path(vlm).expanduser()
    if not OnnxVLMPipeline.accepts(directory):
        raise UsageError(f"--onnx-variant needs --vlm to be {hint}; {vlm} is not one")
    try:
        onnx_vlm_files(directory, variant)
    except FileNotFoundError as error:  # names the variants this export has
        raise UsageError(f"--onnx-variant {variant}: {error}") from None


def serve_command(args: argparse.Namespace) -> None:
    """Runs `vlkit serve` until interrupted."""
    limits = serve_limits(args)  # bad flags fail before any model is loaded
    if args.onnx_variant is not None:
        check_onnx_variant(args.vlm, args.onnx_variant)
    # fastapi/uvicorn are the optional `serve` extra: import them only for this command.
    from vlkit.serve import run_server

    run_server(args.model, args.index, args.host, args.port, args.templates,
               vlm_path=args.vlm, limits=limits, onnx_variant=args.onnx_variant)  # fmt: skip
