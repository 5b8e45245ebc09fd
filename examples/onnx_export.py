"""Export a CLIP to ONNX, run it with onnxruntime, and compare it with torch.

    .venv/bin/python examples/onnx_export.py --model runs/examples/clip/model --out runs/examples/onnx

Expected (2-core CPU, 1 thread, 2026-11-27; the `small-rn-64` model trained by
clip_zero_shot_and_retrieval.py, 12 s in all): export in ~8 s, verified by `export_onnx` itself
(max |onnxruntime - torch| 1.8e-07 on its random batches); then on 200 easy-VQA test images and
the 24 class captions, max |diff| 3.3e-07 (image) and 1.2e-07 (text embeddings), the same top-1
and the same full 24-class ranking for all 200 images (zero-shot accuracy 1.000 both), and the
200 images encoded in 67 ms by onnxruntime vs 159 ms by torch (best of 3, one thread each).
Without `--model` the example exports a randomly initialised preset (`--preset`, default
`small-rn-64`): the agreement is the same, the predictions are meaningless. `--quick` uses the
`tiny` preset (32 px) and 32 images (~10 s).

`export_onnx` writes image_encoder.onnx, text_encoder.onnx and onnx_config.json (temperature,
preprocessing); `OnnxCLIP` runs them without vlkit's model code: only onnxruntime and numpy.
"""

import argparse
import time

import numpy as np
import torch

import vlkit
from vlkit.data.datasets.easy_vqa import CLASS_NAMES, load_easy_vqa
from vlkit.data.images import load_image
from vlkit.inference import OnnxCLIP, export_onnx

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", help="a CLIP checkpoint directory (default: a random preset)")
parser.add_argument("--preset", default="small-rn-64")
parser.add_argument("--out", default="runs/examples/onnx")
parser.add_argument("--images", type=int, default=200)
parser.add_argument("--quick", action="store_true", help="the tiny preset and 32 images")
args = parser.parse_args()
torch.set_num_threads(1)
if args.quick:
    args.preset, args.images = "tiny", 32

# 1. A CLIP model in float32, its tokenizer and transform.
torch.manual_seed(0)
source = args.model or args.preset
model = (vlkit.from_pretrained(source) if args.model else vlkit.create_model(source)).eval()
tokenizer, transform = vlkit.get_tokenizer(source), vlkit.get_transform(source)
print(f"model {source}: {model.num_parameters() / 1e6:.1f} M parameters")

# 2. Export both towers; export_onnx checks onnxruntime against torch before writing anything.
started = time.perf_counter()
report = export_onnx(model, args.out)
print(f"exported to {args.out} (opset {report.opset}) in {time.perf_counter() - started:.1f} s; "
      f"export check max |diff| {max(report.max_abs_diff.values()):.2e}")  # fmt: skip
for name, size in report.file_sizes.items():
    print(f"  {name}: {size / 1e6:.2f} MB")

# 3. Load with onnxruntime only and embed real images and texts both ways.
onnx_model = OnnxCLIP.load(args.out, num_threads=1)
test = load_easy_vqa("test")[: args.images]
pixels = torch.stack([transform(load_image(e.path)) for e in test])  # (N, 3, S, S)
ids = tokenizer([f"a {name}" for name in CLASS_NAMES])  # (24, L)


def best_of(seconds_of, repeats=3):
    return min(seconds_of() for _ in range(repeats))


def timed(function, *inputs):
    started = time.perf_counter()
    function(*inputs)
    return time.perf_counter() - started


with torch.no_grad():
    torch_image = model.encode_image(pixels, normalize=True).numpy()
    torch_text = model.encode_text(ids, normalize=True).numpy()
    torch_seconds = best_of(lambda: timed(model.encode_image, pixels))
onnx_image = onnx_model.encode_image(pixels)
onnx_text = onnx_model.encode_text(ids)
onnx_seconds = best_of(lambda: timed(onnx_model.encode_image, pixels))
image_diff = float(np.abs(onnx_image - torch_image).max())
text_diff = float(np.abs(onnx_text - torch_text).max())
print(f"max |onnx - torch|: image embeddings {image_diff:.2e}, text embeddings {text_diff:.2e}")

# 4. Zero-shot: the same logits formula on both sides, then compare predictions and rankings.
with torch.no_grad():
    torch_logits = model.logits(torch.from_numpy(torch_image), torch.from_numpy(torch_text))
torch_logits = torch_logits.numpy()
onnx_logits = onnx_model.logits(onnx_image, onnx_text)
labels = np.array([e.label for e in test])
same_top1 = float((torch_logits.argmax(1) == onnx_logits.argmax(1)).mean())
same_ranking = float((torch_logits.argsort(1) == onnx_logits.argsort(1)).all(1).mean())
print(f"zero-shot over {len(CLASS_NAMES)} classes on {len(test)} images: same top-1 "
      f"{same_top1:.3f}, same full ranking {same_ranking:.3f}, accuracy torch "
      f"{(torch_logits.argmax(1) == labels).mean():.3f} / onnx "
      f"{(onnx_logits.argmax(1) == labels).mean():.3f}")  # fmt: skip
print(f"image encoder, {len(test)} images, 1 thread: torch {torch_seconds * 1e3:.0f} ms, "
      f"onnxruntime {onnx_seconds * 1e3:.0f} ms")  # fmt: skip
