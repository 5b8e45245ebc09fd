"""`vlkit generate` and `vlkit train-vlm`: answer prompts about images with a generative VLM.

    vlkit train-vlm kind=llava task=easy_vqa vision=RUN/checkpoints/step_00000300 out_dir=runs/vlm
    vlkit generate --model runs/vlm --image shape.png --prompt "what color is the shape?"
    vlkit generate --model SMOLVLM_DIR --image a.jpg --image b.jpg --prompt "Compare them." --int8
    vlkit generate --model SMOLVLM_DIR --video FRAMES_DIR --prompt "What happens?"

`--model` is either a `train_vlm` run directory (`vlm_config.json`: a vlkit fusion VLM with its
word tokenizer) or a Hugging Face SmolVLM / SmolVLM2 / Idefics3 directory (its processor builds
the chat prompt, tiles the images and samples video frames). Tokens are printed as they are
generated. `--attention-map PNG` (fusion runs) saves the answer's attention over the image.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

__all__ = [
    "TextStreamer",
    "add_generate_parsers",
    "generate_command",
    "smolvlm_answer_ids",
    "train_vlm_command",
]


class TextStreamer:
    """Prints generated text as it grows (batch 1): decodes all tokens so far, prints the new part.

    Decoding the whole prefix each time (rather than token by token) keeps word boundaries and
    multi-byte characters right; text that ends in an incomplete character (U+FFFD) is held back
    until the next token completes it, as transformers' `TextStreamer` does.
    """

    def __init__(self, decode: Callable[[list[int]], str], out: TextIO | None = None) -> None:
        self.decode = decode
        self.out = out if out is not None else sys.stdout  # looked up late: tests swap it
        self.tokens: list[int] = []
        self.printed = ""

    def _emit(self, text: str) -> None:
        if text.startswith(self.printed) and len(text) > len(self.printed):
            self.out.write(text[len(self.printed) :])
            self.out.flush()
            self.printed = text

    def __call__(self, new_tokens: torch.Tensor) -> None:
        self.tokens.append(int(new_tokens.reshape(-1)[0]))
        text = self.decode(self.tokens)
        if not text.endswith("\ufffd"):
            self._emit(text)

    def finish(self) -> str:
        """Prints what was held back and a newline; returns the whole decoded text."""
        text = self.decode(self.tokens)
        self._emit(text)
        self.out.write("\n")
        self.out.flush()
        return text


def add_generate_parsers(commands: argparse._SubParsersAction) -> None:
    """Registers `generate` and `train-vlm` on the `vlkit` command's subparsers."""
    gen = commands.add_parser("generate", help="answer a prompt about images (streams tokens)")
    gen.add_argument("--model", required=True, help="train-vlm run dir or SmolVLM/Idefics3 dir")
    gen.add_argument("--image", action="append", default=[], help="an image (repeatable)")
    gen.add_argument("--video", default=None, help="directory of video frames (SmolVLM)")
    gen.add_argument("--fps", type=float, default=None, help="frame rate of --video frames")
    gen.add_argument("--prompt", default="", help="question or instruction")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--do-sample", action="store_true")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--int8", action="store_true", help="dynamic INT8 linear layers (CPU)")
    gen.add_argument("--attention-map", default=None, help="PNG: answer attention (fusion runs)")
    gen.add_argument("--device", default="cpu")

    tv = commands.add_parser("train-vlm", help="train a small generative VLM (fusion recipe)")
    tv.add_argument("overrides", nargs="*", help="VLMRecipe key=value settings, and out_dir=DIR")


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    if not args.do_sample:
        return {}
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    return {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p,
            "generator": generator}  # fmt: skip


def _maybe_int8(model: torch.nn.Module, enabled: bool, device: str) -> torch.nn.Module:
    if not enabled:
        return model
    if device != "cpu":
        raise ValueError("--int8 runs on the CPU: drop --device or --int8")
    from vlkit.inference.quantize import quantize_int8

    return quantize_int8(model)


def _generate_fusion_run(args: argparse.Namespace, out: TextIO) -> str:
    from vlkit.data.images import load_image
    from vlkit.recipes.vlm_run import load_vlm_run

    if len(args.image) != 1 or args.video:
        raise ValueError(f"{args.model}: a fusion VLM run answers about exactly one --image")
    run = load_vlm_run(args.model, device=args.device)
    run.model = model = _maybe_int8(run.model, args.int8, args.device)
    image = load_image(args.image[0])
    ids, unknown = run.prompt_ids(args.prompt)
    if unknown:
        print(f"vlkit: warning: words outside the model's vocabulary: {unknown}", file=sys.stderr)
    tok = run.tokenizer
    pixels = run.transform(image)[None, None].to(args.device)  # (1, 1, 3, S, S)
    streamer = TextStreamer(tok.decode, out)
    sequence = model.generate(
        ids, pixel_values=pixels, max_new_tokens=args.max_new_tokens,
        eos_token_id=tok.eot_token_id, streamer=streamer, **_sampling(args),
    )  # fmt: skip
    text = streamer.finish()
    if args.attention_map:
        _save_attention(model, sequence, ids.shape[1], pixels, image, tok, args)
    return text


def _save_attention(
    model: Any, sequence: torch.Tensor, prompt_len: int, pixels: torch.Tensor, image: Any,
    tok: Any, args: argparse.Namespace,
) -> None:  # fmt: skip
    """Attention over image tokens of the positions that produced each generated token."""
    from vlkit.viz.attention import save_attention_overlays

    if not hasattr(model, "attention_maps"):
        raise ValueError(f"{args.model}: this fusion kind has no attention maps")
    new = sequence[0, prompt_len:].tolist()
    if tok.eot_token_id in new:
        new = new[: new.index(tok.eot_token_id)]
    if not new:
        raise ValueError("the model generated no tokens to draw attention maps for")
    inputs = sequence[:, : prompt_len + len(new)]
    with torch.no_grad():
        maps = model.attention_maps(inputs, pixels)[0]  # (L, T)
    # The output at position t predicts token t + 1: generated token j came from prompt_len-1+j.
    rows = maps[prompt_len - 1 : prompt_len - 1 + len(new)]
    labels = [tok.decode([t]) for t in new]
    path = save_attention_overlays(image, rows, labels, args.attention_map, title=args.prompt)
    print(f"vlkit: wrote attention overlays to {path}", file=sys.stderr)


def smolvlm_answer_ids(
    model: Any,
    processor: Any,
    images: Sequence[Any],
    prompt: str,
    *,
    video: Any = None,
    max_new_tokens: int = 64,
    streamer: Callable[[torch.Tensor], None] | None = None,
    device: str | torch.device = "cpu",
    **generate_options: Any,
) -> list[int]:
    """The new token ids of a SmolVLM / Idefics3 model's answer about images (and a video).

    One user turn holds the images, then the video, then the prompt; the processor's chat
    template adds the assistant prompt. Decode with `processor.decode(ids,
    skip_special_tokens=True)` (the stop token, when generated, is the last id).

    Args:
        model: A `GenerativeVLM` from `vlkit.from_pretrained(directory)`, in eval mode.
        processor: The directory's `SmolVLMProcessor`.
        images: RGB PIL images (e.g. `vlkit.data.images.load_image(path)`), possibly none.
        prompt: The question or instruction.
        video: A `vlkit.data.smolvlm.image_processor.Video`, or None.
        max_new_tokens: Generation budget; generation stops at the processor's stop tokens.
        streamer: Called with each step's new token, as in `generation.generate`.
        device: Where the model is (the inputs are moved there).
        **generate_options: Further `generate` options (sampling, generator, ...).
    """
    content: list[dict[str, Any]] = [{"type": "image"} for _ in images]
    if video is not None:
        content.append({"type": "video"})
    content.append({"type": "text", "text": prompt})
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True
    )
    inputs = processor(text=text, images=[list(images)] if images else None, videos=video)
    inputs = {k: v.to(device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    sequence = model.generate(
        inputs["input_ids"],
        pixel_values=inputs.get("pixel_values"),
        pixel_attention_mask=inputs.get("pixel_attention_mask"),
        attention_mask=inputs.get("attention_mask"),
        max_new_tokens=max_new_tokens,
        eos_token_id=processor.stop_token_ids,
        streamer=streamer,
        **generate_options,
    )
    return sequence[0, inputs["input_ids"].shape[1] :].tolist()


def _generate_smolvlm(args: argparse.Namespace, out: TextIO) -> str:
    from vlkit.data.images import load_image
    from vlkit.data.smolvlm.image_processor import Video
    from vlkit.data.smolvlm.processor import SmolVLMProcessor
    from vlkit.hub import from_pretrained

    processor = SmolVLMProcessor.from_pretrained(args.model)
    model = _maybe_int8(from_pretrained(args.model).to(args.device).eval(), args.int8, args.device)
    images = [load_image(path) for path in args.image]
    video = Video.from_directory(args.video, fps=args.fps) if args.video else None
    streamer = TextStreamer(lambda ids: processor.decode(ids, skip_special_tokens=True), out)
    smolvlm_answer_ids(
        model, processor, images, args.prompt, video=video, max_new_tokens=args.max_new_tokens,
        streamer=streamer, device=args.device, **_sampling(args),
    )  # fmt: skip
    return streamer.finish()


def generate_command(args: argparse.Namespace, out: TextIO | None = None) -> str:
    """Runs `vlkit generate`; returns the generated text (also streamed to `out`, default stdout)."""
    out = out if out is not None else sys.stdout
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{args.model}: no such model directory")
    for path in [*args.image, *([args.video] if args.video else [])]:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
    if args.attention_map and not (model_dir / "vlm_config.json").is_file():
        raise ValueError("--attention-map needs a fusion VLM run directory (vlm_config.json)")
    torch.manual_seed(args.seed)
    if (model_dir / "vlm_config.json").is_file():
        return _generate_fusion_run(args, out)
    return _generate_smolvlm(args, out)


def train_vlm_command(overrides: Sequence[str]) -> dict[str, Any]:
    """`vlkit train-vlm key=value ...`: `VLMRecipe` settings plus `out_dir` (default runs/vlm)."""
    from dataclasses import fields

    from vlkit.recipes.vlm_run import VLMRecipe, train_vlm

    types = {f.name: f.type for f in fields(VLMRecipe)}
    settings: dict[str, Any] = {}
    out_dir = "runs/vlm"
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r}: expected key=value")
        if key == "out_dir":
            out_dir = value
        elif key not in types:
            raise ValueError(f"unknown setting {key!r}; known: out_dir, {', '.join(types)}")
        elif "bool" in str(types[key]):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{key}={value!r}: expected true or false")
            settings[key] = value.lower() in ("true", "1")
        elif "int" in str(types[key]):
            settings[key] = None if value.lower() == "none" else int(value)
        elif "float" in str(types[key]):
            settings[key] = float(value)
        else:
            settings[key] = value
    return train_vlm(VLMRecipe(**settings), out_dir)
