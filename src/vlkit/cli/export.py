"""`vlkit export`: a CLIP / SigLIP checkpoint or a SmolVLM / Idefics3 / LLaVA directory -> ONNX.

    vlkit export --model CHECKPOINT --out DIR [--opset N] [--no-normalize] [--int8]
    vlkit export --model SMOLVLM_DIR --format onnx --out DIR [--quantize int8|int4]
                 [--block-size 32|64|128] [--opset N]

A CLIP / SigLIP checkpoint: writes DIR/image_encoder.onnx, DIR/text_encoder.onnx and
DIR/onnx_config.json (see `vlkit.inference.onnx_export`), checks them with onnxruntime against
torch, and returns the export report (opset, file sizes, max abs differences), which the `vlkit`
command prints as JSON. `--int8` also writes DIR/image_encoder.int8.onnx and
DIR/text_encoder.int8.onnx (dynamic INT8 weights), checked by the cosine similarity of their
embeddings to torch's; load them with `OnnxCLIP.load(DIR, int8=True)`.

A SmolVLM / SmolVLM2 / Idefics3 checkpoint directory (transformers' layout): writes a new DIR in
the layout of the onnx-community exports (DIR/onnx/vision_encoder.onnx, embed_tokens.onnx,
decoder_model_merged.onnx, and the config, processor and tokenizer files), after onnxruntime
matched torch on two prompts; `--quantize` adds the INT8 (`*_int8.onnx`) or INT4 MatMulNBits
(`*_q4.onnx`) vision encoder and decoder with their agreement with float32
(`vlkit.inference.smolvlm_onnx_export`). DIR must not exist. A transformers LLaVA directory
(`model_type` llava) is exported the same way (`vlkit.inference.llava_onnx_export`: the vision
graph takes (N, 3, H, W) images, no pixel mask), with the same options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vlkit.cli.errors import UsageError
from vlkit.hub import from_pretrained
from vlkit.hub.hf_llava_config import is_llava_directory
from vlkit.hub.hf_smolvlm import is_smolvlm_directory
from vlkit.inference.llava_onnx_export import export_llava_onnx
from vlkit.inference.onnx_export import MIN_OPSET, export_onnx
from vlkit.inference.smolvlm_onnx_export import export_smolvlm_onnx
from vlkit.models.clip import CLIP

__all__ = ["add_export_parser", "export_command"]

_QUANTIZE = ("int8", "int4")
_BLOCK_SIZES = ("32", "64", "128")


def add_export_parser(commands: argparse._SubParsersAction) -> None:
    """Registers `export` on the `vlkit` command's subparsers."""
    export = commands.add_parser(
        "export", help="export a CLIP/SigLIP or SmolVLM/Idefics3 model to ONNX (onnxruntime)"
    )
    export.add_argument("--model", required=True, help="checkpoint directory or hub id")
    export.add_argument("--out", required=True, help="output directory")
    export.add_argument("--format", default="onnx", help="export format: onnx (the only one)")
    export.add_argument(
        "--opset", type=int, default=None, help="ONNX opset >= 18 (exporter default)"
    )
    export.add_argument(
        "--no-normalize",
        dest="normalize",
        action="store_false",
        help="CLIP: export raw embeddings instead of L2-normalised ones",
    )
    export.add_argument(
        "--int8",
        action="store_true",
        help="CLIP: also write dynamically quantized INT8 encoders (*.int8.onnx, CPU)",
    )
    # Checked in `export_command` (not argparse `choices`) for a one-line error message.
    export.add_argument(
        "--quantize",
        default=None,
        help="SmolVLM: also write int8 (*_int8.onnx) or int4 (*_q4.onnx, MatMulNBits) graphs",
    )
    export.add_argument(
        "--block-size", default=None, help="--quantize int4: block size 32 (default), 64 or 128"
    )


def export_command(args: argparse.Namespace) -> dict[str, Any]:
    """Runs `vlkit export`; returns the export report as a dict."""
    if args.format != "onnx":
        raise UsageError(f"--format {args.format}: the supported format is onnx")
    if args.opset is not None and args.opset < MIN_OPSET:
        raise UsageError(f"--opset {args.opset}: the ONNX exporter supports {MIN_OPSET} or later")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a directory")
    if is_smolvlm_directory(args.model) or is_llava_directory(args.model):
        return _export_smolvlm(args, out)
    if args.quantize is not None:
        raise UsageError(
            "--quantize applies to SmolVLM / Idefics3 / LLaVA directories; CLIP / SigLIP exports "
            "take --int8"
        )
    if args.block_size is not None:  # silently ignoring it would write something else
        raise UsageError("--block-size applies to --quantize int4 of a SmolVLM / LLaVA export")
    model = from_pretrained(args.model)
    if not isinstance(model, CLIP):
        raise ValueError(
            f"{args.model}: vlkit export handles CLIP / SigLIP models and SmolVLM / SmolVLM2 / "
            f"Idefics3 / LLaVA directories, got {type(model).__name__}"
        )
    _require_export_extra()
    report = export_onnx(
        model, out, opset=args.opset, normalize=args.normalize, verify=True, int8=args.int8
    )
    return {"model": str(args.model), **report.to_dict()}


def _export_smolvlm(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    if args.quantize is not None and args.quantize not in _QUANTIZE:
        raise UsageError(f"--quantize {args.quantize}: choose int8 or int4")
    if args.block_size is not None and args.quantize != "int4":
        raise UsageError(f"--block-size {args.block_size}: applies to --quantize int4 only")
    block_size = args.block_size or "32"
    if block_size not in _BLOCK_SIZES:
        raise UsageError(f"--block-size {block_size}: choose 32, 64 or 128")
    if args.int8:
        raise UsageError("--int8 is for CLIP exports; a SmolVLM export takes --quantize int8")
    if out.exists():
        raise UsageError(f"--out {args.out}: already exists; choose a new output directory")
    _require_export_extra()
    # A transformers LLaVA directory (`llava_onnx_export`): the same layout and options.
    exporter = export_llava_onnx if is_llava_directory(args.model) else export_smolvlm_onnx
    report = exporter(
        args.model,
        out,
        quantize=args.quantize,
        block_size=int(block_size),
        opset=args.opset,
        progress=lambda note: print(f"vlkit export: {note}", file=sys.stderr, flush=True),
    )
    return {"model": str(args.model), **report.to_dict()}


def _require_export_extra() -> None:
    """Optional dependencies, checked up front for a one-line message naming the extra."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ValueError(
            f"vlkit export needs the export extra (pip install 'vlkit[export]'): {error}"
        ) from error
