"""`vlkit generate`: answer prompts about images with a generative VLM.

    vlkit generate --model runs/vlm --image shape.png --prompt "what color is the shape?"
    vlkit generate --model SMOLVLM_DIR --image a.jpg --image b.jpg --prompt "Compare them." --int8
    vlkit generate --model SMOLVLM_DIR --image a.jpg --prompt "Describe it." --int4
    vlkit generate --model SMOLVLM_DIR --video FRAMES_DIR --prompt "What happens?"
    vlkit generate --model SMOLVLM_DIR --video clip.mp4 --prompt "What happens?"
    vlkit generate --model ONNX_DIR --image a.jpg --prompt "Describe it." --onnx-variant q4

`--model` is either a `train_vlm` run directory (`vlm_config.json`: a vlkit fusion VLM with its
word tokenizer) or a Hugging Face SmolVLM / SmolVLM2 / Idefics3 directory (its processor builds
the chat prompt, tiles the images and samples video frames), or its ONNX export (`vlkit export
--format onnx`: run with onnxruntime, `--onnx-variant` picks fp32 / int8 / q4 files);
`vlkit.inference.load_vlm` loads each as a `VLMPipeline`. Tokens are printed as they are
generated. `--attention-map PNG` (fusion runs) saves the answer's attention over the image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

import torch

from vlkit.cli.arguments import float_range, int_at_least, output_file
from vlkit.cli.errors import UsageError
from vlkit.data.images import load_image
from vlkit.data.smolvlm.image_processor import Video
from vlkit.distributed import resolve_device
from vlkit.inference.onnx_vlm import ONNX_VARIANTS
from vlkit.inference.onnx_vlm_pipeline import OnnxVLMPipeline
from vlkit.inference.text_streamer import TextStreamer
from vlkit.inference.vlm_loading import load_vlm, vlm_directory, vlm_pipeline_class
from vlkit.inference.vlm_pipeline import sampling_options
from vlkit.viz.attention import save_attention_overlays

__all__ = ["TextStreamer", "add_generate_parser", "generate_command"]


def add_generate_parser(commands: argparse._SubParsersAction) -> None:
    """Registers `generate` on the `vlkit` command's subparsers."""
    gen = commands.add_parser("generate", help="answer a prompt about images (streams tokens)")
    gen.add_argument(
        "--model", required=True, help="train-vlm run dir, SmolVLM/Idefics3 dir or hub id"
    )
    gen.add_argument("--image", action="append", default=[], help="an image (repeatable)")
    gen.add_argument(
        "--video", default=None, help="video file (.mp4/.webm/.mov) or frame directory (SmolVLM)"
    )
    gen.add_argument("--fps", type=float_range(0, low_open=True), default=None,
                     help="frame rate of --video frames (> 0)")  # fmt: skip
    gen.add_argument("--prompt", default="", help="question or instruction (required)")
    gen.add_argument("--max-new-tokens", type=int_at_least(1), default=64,
                     help="longest answer in tokens (>= 1)")  # fmt: skip
    gen.add_argument("--do-sample", action="store_true")
    gen.add_argument("--temperature", type=float_range(0, low_open=True), default=1.0,
                     help="sampling temperature, > 0 (greedy: leave out --do-sample)")  # fmt: skip
    gen.add_argument("--top-p", type=float_range(0, 1, low_open=True), default=None,
                     help="nucleus sampling mass in (0, 1]")  # fmt: skip
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--int8", action="store_true", help="dynamic INT8 linear layers (CPU)")
    gen.add_argument("--int4", action="store_true", help="weight-only INT4 linear layers (CPU)")
    gen.add_argument("--onnx-variant", choices=list(ONNX_VARIANTS), default=None,
                     help="which files of an ONNX export run (default fp32)")  # fmt: skip
    gen.add_argument("--attention-map", default=None, help="PNG: answer attention (fusion runs)")
    gen.add_argument("--device", default="cpu")


def generate_command(args: argparse.Namespace, out: TextIO | None = None) -> str:
    """Runs `vlkit generate`; returns the generated text (also streamed to `out`, default stdout)."""
    out = out if out is not None else sys.stdout
    # Checked before the model is found, downloaded or loaded.
    resolve_device(args.device, "--device")
    if args.attention_map:
        output_file(args.attention_map, "--attention-map")
    model = vlm_directory(args.model, "model directory")  # a hub id is downloaded here, once
    for path in [*args.image, *([args.video] if args.video else [])]:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
    kind = vlm_pipeline_class(model)  # checks the flags against the kind before loading
    if args.attention_map and not kind.draws_attention:
        raise UsageError("--attention-map needs a fusion VLM run directory (vlm_config.json)")
    if kind.max_images == 1 and (len(args.image) != 1 or args.video):
        raise UsageError(f"{args.model}: a {kind.description} answers about exactly one --image")
    if args.int8 and args.device != "cpu":
        raise UsageError("--int8 runs on the CPU: drop --device or --int8")
    if args.int4 and args.int8:
        raise UsageError("--int4 and --int8 exclude each other: choose one")
    if args.int4 and args.device != "cpu":
        raise UsageError("--int4 runs on the CPU: drop --device or --int4")
    onnx_export = issubclass(kind, OnnxVLMPipeline)
    if args.onnx_variant and not onnx_export:
        raise UsageError(f"--onnx-variant needs {OnnxVLMPipeline.directory_hint}")
    if onnx_export and args.int8:
        raise UsageError("--int8: an ONNX export runs its INT8 files with --onnx-variant int8")
    if onnx_export and args.int4:
        raise UsageError("--int4: an ONNX export runs its INT4 files with --onnx-variant q4")
    if onnx_export and args.device != "cpu":
        raise UsageError("--device: an ONNX export runs on the CPU (drop --device)")
    torch.manual_seed(args.seed)
    pipeline = load_vlm(
        model, device=args.device, int8=args.int8, onnx_variant=args.onnx_variant, int4=args.int4
    )
    if not args.prompt.strip() and pipeline.needs_prompt:  # a captioner takes no prompt
        raise UsageError(
            '--prompt is empty: give a question or instruction, e.g. --prompt "What is in the image?"'
        )
    images = [load_image(path) for path in args.image]
    video: Video | Path | None = None
    if args.video:  # a frame directory (at --fps), or a video file the processor decodes
        is_dir = Path(args.video).is_dir()
        video = Video.from_directory(args.video, fps=args.fps) if is_dir else Path(args.video)
    inputs = pipeline.prepare(images, args.prompt, video=video)
    if inputs.unknown_words:
        print(
            f"vlkit: warning: words outside the model's vocabulary: {inputs.unknown_words}",
            file=sys.stderr,
        )
    streamer = TextStreamer(pipeline.decode, out)
    sampling = sampling_options(
        args.do_sample, args.temperature, args.top_p, args.seed, args.device
    )
    new = pipeline.generate(inputs, args.max_new_tokens, streamer=streamer, **sampling)
    text = streamer.finish()
    if args.attention_map:
        rows, labels = pipeline.answer_attention(inputs, new)
        path = save_attention_overlays(
            images[0], rows, labels, args.attention_map, title=args.prompt
        )
        print(f"vlkit: wrote attention overlays to {path}", file=sys.stderr)
    return text
