"""`vlkit serve`: the web app (zero-shot, image search, VQA / captions) on one machine.

    vlkit serve [--model PATH] [--index DIR] [--vlm RUN_OR_SMOLVLM_DIR] [--host H] [--port N]

The app is `vlkit.serve.create_app`; fastapi and uvicorn are the optional `serve` extra.
"""

from __future__ import annotations

import argparse

__all__ = ["add_serve_parser", "serve_command"]


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    """Registers `serve` on the `vlkit` command's subparsers."""
    sv = commands.add_parser("serve", help="web app: zero-shot, image search, VQA / captions")
    sv.add_argument("--model", default=None, help="CLIP-like checkpoint directory or hub id")
    sv.add_argument("--index", default=None, help="image index directory from `vlkit index`")
    sv.add_argument("--vlm", default=None, help="train-vlm run dir or SmolVLM dir (generation)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--templates", default="none", help="template set for text search queries")


def serve_command(args: argparse.Namespace) -> None:
    """Runs `vlkit serve` until interrupted."""
    # fastapi/uvicorn are the optional `serve` extra: import them only for this command.
    from vlkit.serve import run_server

    run_server(args.model, args.index, args.host, args.port, args.templates, vlm_path=args.vlm)
