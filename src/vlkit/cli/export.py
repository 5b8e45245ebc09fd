"""`vlkit export`: a CLIP / SigLIP checkpoint -> ONNX image and text encoders.

    vlkit export --model CHECKPOINT --out DIR [--opset N] [--no-normalize] [--int8]

Writes DIR/image_encoder.onnx, DIR/text_encoder.onnx and DIR/onnx_config.json (see
`vlkit.inference.onnx_export`), checks them with onnxruntime against torch, and returns the export
report (opset, file sizes, max abs differences), which the `vlkit` command prints as JSON.
`--int8` also writes DIR/image_encoder.int8.onnx and DIR/text_encoder.int8.onnx (dynamic INT8
weights), checked by the cosine similarity of their embeddings to torch's; load them with
`OnnxCLIP.load(DIR, int8=True)`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vlkit.cli.errors import UsageError
from vlkit.hub import from_pretrained
from vlkit.inference.onnx_export import MIN_OPSET, export_onnx
from vlkit.models.clip import CLIP

__all__ = ["add_export_parser", "export_command"]


def add_export_parser(commands: argparse._SubParsersAction) -> None:
    """Registers `export` on the `vlkit` command's subparsers."""
    export = commands.add_parser("export", help="export a CLIP/SigLIP model to ONNX (onnxruntime)")
    export.add_argument("--model", required=True, help="checkpoint directory or hub id")
    export.add_argument("--out", required=True, help="output directory")
    export.add_argument(
        "--opset", type=int, default=None, help="ONNX opset >= 18 (exporter default)"
    )
    export.add_argument(
        "--no-normalize",
        dest="normalize",
        action="store_false",
        help="export raw embeddings instead of L2-normalised ones",
    )
    export.add_argument(
        "--int8",
        action="store_true",
        help="also write dynamically quantized INT8 encoders (*.int8.onnx, CPU)",
    )


def export_command(args: argparse.Namespace) -> dict[str, Any]:
    """Runs `vlkit export`; returns the export report as a dict."""
    if args.opset is not None and args.opset < MIN_OPSET:
        raise UsageError(f"--opset {args.opset}: the ONNX exporter supports {MIN_OPSET} or later")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a directory")
    model = from_pretrained(args.model)
    if not isinstance(model, CLIP):
        raise ValueError(
            f"{args.model}: vlkit export handles CLIP / SigLIP models, got {type(model).__name__}"
        )
    try:  # optional dependencies: checked here for a one-line message naming the extra
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ValueError(
            f"vlkit export needs the export extra (pip install 'vlkit[export]'): {error}"
        ) from error
    report = export_onnx(
        model, out, opset=args.opset, normalize=args.normalize, verify=True, int8=args.int8
    )
    return {"model": str(args.model), **report.to_dict()}
