"""Index a folder of images with a CLIP model (faiss), then search it by text and by image.

    .venv/bin/python examples/image_search.py --model runs/examples/clip/model --out runs/examples/search

Expected (2-core CPU, 1 thread, 2026-11-27; the model trained by clip_zero_shot_and_retrieval.py,
4 s): 200 easy-VQA test images indexed; text queries "<colour> <shape>" (a 13-phrasing prompt
ensemble) reach precision@5 1.000 (hits of the queried class among the top 5, over the 21
classes with at least 5 indexed images); every image used as a query finds itself first
(score 1.0000), and 0.980 of its other top-5 hits share its class. Without `--model` the
example first trains a CLIP itself with `vlkit.recipes.demo.run_demo` (`small-rn-64`, 300 steps, ~2 min
more). `--quick`: the `tiny` preset trained for 30 steps and 48 images (~12 s); the
text-search numbers are then low, but each image still finds itself first.

`build_image_index` embeds every image under a folder and saves an `EmbeddingIndex` (faiss
`flat`: exact cosine search) that remembers its model; `ImageSearcher` pairs it with the model
for text queries (here a prompt ensemble) and image queries; `vlkit index` / `vlkit search` /
`vlkit serve` are the same calls from the shell.
"""

import argparse
import shutil
from collections import Counter
from pathlib import Path

import torch
from PIL import Image

from vlkit.api import load_clip
from vlkit.data.datasets.easy_vqa import CAPTION_TEMPLATES, CLASS_NAMES, load_easy_vqa
from vlkit.inference import EmbeddingIndex, ImageSearcher, build_image_index
from vlkit.recipes.demo import run_demo

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", help="a CLIP checkpoint directory (default: train one)")
parser.add_argument("--out", default="runs/examples/search")
parser.add_argument("--images", type=int, default=200, help="easy-VQA test images to index")
parser.add_argument("--quick", action="store_true", help="a 30-step tiny model, 48 images")
args = parser.parse_args()
torch.set_num_threads(1)
out = Path(args.out)
if args.quick:
    args.images = 48

# 1. A CLIP checkpoint directory: the given one, or train one with the demo pipeline.
model_dir = args.model
if model_dir is None:
    quick = dict(preset="tiny", steps=30, train_limit=512, test_limit=32)
    summary = run_demo(out / "clip", plots=False, progress=False, threads=1,
                       **(quick if args.quick else {}))  # fmt: skip
    print(f"trained a CLIP for {summary['steps']} steps in {summary['train_seconds']:.0f} s "
          f"(zero-shot top-1 {summary['zero_shot_top1']:.3f})")  # fmt: skip
    model_dir = str(out / "clip" / "model")

# 2. A folder of images: the first easy-VQA test images (file name -> class for scoring).
images_dir = out / "images"
shutil.rmtree(images_dir, ignore_errors=True)
images_dir.mkdir(parents=True)
class_of = {}
for example in load_easy_vqa("test")[: args.images]:
    shutil.copy(example.path, images_dir)
    class_of[Path(example.path).name] = example.class_name

# 3. Embed and index every image in the folder; the index is saved next to its model's path.
index = build_image_index(model_dir, str(images_dir), out_dir=str(out / "index"), kind="flat")
print(f"indexed {len(index)} images ({index.dim}-d embeddings) into {out / 'index'}")
index = EmbeddingIndex.load(out / "index")  # as `vlkit search` would, checksum verified
searcher = ImageSearcher(index, *load_clip(model_dir), templates=list(CAPTION_TEMPLATES))


def class_name(hit):
    return class_of[Path(hit.name).name]


# 4. Text -> image: query every class and score the top-5 hits.
counts = Counter(class_of.values())
precisions = []
for name in CLASS_NAMES:
    hits = searcher.search_text(name, k=5)
    if counts[name] >= 5:
        precisions.append(sum(class_name(h) == name for h in hits) / 5)
    if name in ("red circle", "blue triangle", "teal rectangle"):
        shown = ", ".join(f"{class_name(h)} ({h.score:.3f})" for h in hits[:3])
        print(f"text {name!r:18} -> {shown}")
print(f"text->image precision@5 over {len(precisions)} classes: "
      f"{sum(precisions) / max(1, len(precisions)):.3f}")  # fmt: skip

# 5. Image -> image: every indexed image as a query; its own row should come first.
self_first, same_class = 0, []
for path in sorted(images_dir.iterdir()):
    hits = searcher.search_image(Image.open(path), k=5)
    self_first += Path(hits[0].name).name == path.name
    same_class += [class_name(h) == class_of[path.name] for h in hits[1:]]
    if path.name == "0.png":
        print(f"image {path.name} ({class_of[path.name]}) -> "
              + ", ".join(f"{Path(h.name).name} {class_name(h)} ({h.score:.4f})" for h in hits[:3]))  # fmt: skip
print(f"image->image: self is the top hit for {self_first}/{len(index)} queries; "
      f"other top-5 hits of the same class: {sum(same_class) / len(same_class):.3f}")  # fmt: skip
