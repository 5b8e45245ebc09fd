"""INT8 CLIP inference: torch fp32, torch dynamic INT8, onnxruntime fp32 and INT8, side by side.

    python benchmarks/clip_int8.py                                   # runs/demo/model (make demo)
    python benchmarks/clip_int8.py --model runs/easy_vqa_vit/checkpoints/step_00000600
    python benchmarks/clip_int8.py --preset clip-vit-b-32            # random weights: speed only
    python benchmarks/clip_int8.py --json                            # the rows as JSON

One process, the same inputs for every backend:

- torch fp32: the model as loaded;
- torch int8: `vlkit.inference.quantize_int8` (dynamic INT8 `nn.Linear`; convolutions stay float);
- onnxruntime fp32 and int8: `export_onnx(..., int8=True)` into a temporary directory, loaded
  with `OnnxCLIP.load(dir, int8=...)`.

For each: images/s and texts/s (median of `--repeats` timed batches after one warm-up), the size of
the weights (torch: bytes of the state dict as `torch.save` writes it; onnxruntime: the two .onnx
files), min / mean cosine similarity of the embeddings to torch fp32's (the test images and the
class prompts), and zero-shot top-1 on the 1,000 easy-VQA test images: 24 "<colour> <shape>"
classes, each class's weight the mean of its normalised prompt embeddings over the demo's
caption templates (as `make demo` evaluates). `--preset` builds a model with random weights and
reports speed and size only (cosines to fp32 are still shown; accuracy is meaningless).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlkit.inference import OnnxCLIP, export_onnx, quantize_int8
from vlkit.models.clip import CLIP

Encoder = Callable[[torch.Tensor], np.ndarray]


def _torch_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def _torch_encoders(model: CLIP) -> tuple[Encoder, Encoder]:
    @torch.no_grad()
    def image(pixels: torch.Tensor) -> np.ndarray:
        return model.encode_image(pixels, normalize=True).numpy()

    @torch.no_grad()
    def text(ids: torch.Tensor) -> np.ndarray:
        return model.encode_text(ids, normalize=True).numpy()

    return image, text


def _speed(encode: Encoder, batch: torch.Tensor, repeats: int) -> float:
    """Items per second: the median over `repeats` timed calls, after one warm-up call."""
    encode(batch)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        encode(batch)
        times.append(time.perf_counter() - started)
    return len(batch) / statistics.median(times)


def _encode_all(encode: Encoder, data: torch.Tensor, batch_size: int) -> np.ndarray:
    return np.concatenate([encode(chunk) for chunk in data.split(batch_size)])


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (_normalize(a) * _normalize(b)).sum(axis=-1)


def _easy_vqa(model: CLIP, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The easy-VQA test images, preprocessed as the model expects, and their class labels."""
    from vlkit.data.datasets.easy_vqa import load_easy_vqa
    from vlkit.data.images import load_image
    from vlkit.data.transforms import get_transform

    examples = load_easy_vqa("test")[:limit]
    transform = get_transform(model.config.preprocess, train=False)
    images = torch.stack([transform(load_image(e.path)) for e in examples])
    return images, torch.tensor([e.label for e in examples])


def _load(args: argparse.Namespace) -> tuple[CLIP, str]:
    if args.preset is not None:
        from vlkit.models.clip import create_model

        torch.manual_seed(0)
        return create_model(args.preset).eval(), f"{args.preset} (random weights)"
    from vlkit.hub import from_pretrained

    if not Path(args.model).is_dir():
        sys.exit(
            f"{args.model}: no such checkpoint directory. The default is the model that "
            "`make demo` trains (runs/demo/model): run `make demo` first, or pass --model "
            "DIR or --preset NAME."
        )
    model = from_pretrained(args.model)
    if not isinstance(model, CLIP):
        sys.exit(f"{args.model}: a CLIP / SigLIP checkpoint is needed, got {type(model).__name__}")
    return model.eval(), args.model


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    model, name = _load(args)
    from vlkit.data.datasets.easy_vqa import CAPTION_TEMPLATES, CLASS_NAMES
    from vlkit.data.tokenizers import get_tokenizer

    text_config, size = model.config.text, model.config.vision.image_size
    tokenizer = get_tokenizer("clip", context_length=text_config.context_length)
    prompts = tokenizer([t.format(c) for c in CLASS_NAMES for t in CAPTION_TEMPLATES])
    prompts = prompts.clamp(max=text_config.vocab_size - 1)  # a preset's smaller vocabulary
    accuracy = args.preset is None
    if accuracy:
        images, labels = _easy_vqa(model, args.max_test)
    else:
        images = torch.randn(args.batch_size, model.config.vision.num_channels, size, size)
        labels = None
    image_batch = images[: args.batch_size]
    text_batch = prompts[: args.batch_size].repeat(-(-args.batch_size // len(prompts)), 1)
    text_batch = text_batch[: args.batch_size]

    backends: dict[str, tuple[Encoder, Encoder, int]] = {}
    backends["torch fp32"] = (*_torch_encoders(model), _torch_bytes(model))
    quantized = quantize_int8(model)
    backends["torch int8"] = (*_torch_encoders(quantized), _torch_bytes(quantized))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        report = export_onnx(model, tmp, int8=True, int8_min_cosine=args.int8_min_cosine)
        export_seconds = time.perf_counter() - started
        sizes = report.file_sizes
        for label, int8 in (("onnxruntime fp32", False), ("onnxruntime int8", True)):
            onnx_model = OnnxCLIP.load(tmp, num_threads=args.threads, int8=int8)
            files = ("image_encoder", "text_encoder")
            suffix = ".int8.onnx" if int8 else ".onnx"
            backends[label] = (
                onnx_model.encode_image,
                onnx_model.encode_text,
                sum(sizes[f + suffix] for f in files),
            )

    rows = []
    reference: dict[str, np.ndarray] = {}
    for label, (encode_image, encode_text, weight_bytes) in backends.items():
        image_embeds = _encode_all(encode_image, images, args.batch_size)
        text_embeds = _encode_all(encode_text, prompts, args.batch_size)
        if not reference:
            reference = {"image": image_embeds, "text": text_embeds}
        image_cos = _cosines(image_embeds, reference["image"])
        text_cos = _cosines(text_embeds, reference["text"])
        row: dict[str, Any] = {
            "backend": label,
            "images_per_s": round(_speed(encode_image, image_batch, args.repeats), 1),
            "texts_per_s": round(_speed(encode_text, text_batch, args.repeats), 1),
            "weight_mb": round(weight_bytes / 1e6, 2),
            "image_cos_min": round(float(image_cos.min()), 5),
            "image_cos_mean": round(float(image_cos.mean()), 5),
            "text_cos_min": round(float(text_cos.min()), 5),
            "text_cos_mean": round(float(text_cos.mean()), 5),
        }
        if accuracy:
            classes = _normalize(text_embeds).reshape(len(CLASS_NAMES), len(CAPTION_TEMPLATES), -1)
            classifier = _normalize(classes.mean(axis=1))  # (24, D)
            predicted = (_normalize(image_embeds) @ classifier.T).argmax(axis=1)
            row["zero_shot_top1"] = round(float((predicted == labels.numpy()).mean()), 4)
            if label == "torch fp32":
                reference["predicted"] = predicted
            row["agree_with_fp32"] = round(float((predicted == reference["predicted"]).mean()), 4)
        rows.append(row)
    return {
        "model": name,
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} thread(s)",
        "versions": _versions(),
        "images": len(images),
        "batch_size": args.batch_size,
        "export_seconds": round(export_seconds, 1),
        "export_int8_min_cosine": report.int8_min_cosine,
        "rows": rows,
    }


def _versions() -> str:
    import onnxruntime

    return f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"


def _markdown(result: dict[str, Any]) -> str:
    accuracy = "zero_shot_top1" in result["rows"][0]
    head = ["backend", "images/s", "texts/s", "weights MB", "image cos min / mean",
            "text cos min / mean"]  # fmt: skip
    if accuracy:
        head += ["zero-shot top-1", "agrees with fp32"]
    lines = [
        f"{result['model']}: {result['images']} images, batch {result['batch_size']}, "
        f"{result['machine']}, {result['versions']}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in result["rows"]:
        cells = [r["backend"], f"{r['images_per_s']:.1f}", f"{r['texts_per_s']:.1f}",
                 f"{r['weight_mb']:.2f}", f"{r['image_cos_min']:.4f} / {r['image_cos_mean']:.4f}",
                 f"{r['text_cos_min']:.4f} / {r['text_cos_mean']:.4f}"]  # fmt: skip
        if accuracy:
            cells += [f"{r['zero_shot_top1']:.4f}", f"{r['agree_with_fp32']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo/model", help="trained CLIP checkpoint")
    parser.add_argument("--preset", default=None, help="random weights, speed only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-test", type=int, default=None, help="easy-VQA test images")
    parser.add_argument(
        "--int8-min-cosine", type=float, default=0.99, help="export_onnx's INT8 check"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else _markdown(result))


if __name__ == "__main__":
    main()
