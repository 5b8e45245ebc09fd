"""COCO 5k and Flickr30k 1k Karpathy test splits for image-text retrieval.

Two layouts are read, so one folder serves both vlkit and `clip_benchmark eval --dataset_root`:

* Karpathy's split files (Karpathy & Fei-Fei 2015, `dataset_coco.json` / `dataset_flickr30k.json`
  from https://cs.stanford.edu/people/karpathy/deepimagesent/): {"images": [{"filename",
  ["filepath"], "split", "sentences": [{"raw"}]}]}; the images of `split` in file order, each
  with its "raw" sentences in order. COCO's "train" is Karpathy's train + restval (113k images).
* CLIP_benchmark's own files (github.com/mehdidc/retrieval_annotations): COCO's
  `coco_<split>_karpathy.json` in COCO captions format with images under val2014/ (train2014/ for
  train), read as torchvision's CocoCaptions does (image ids sorted, captions in annotation
  order); Flickr's `flickr30k_<split>_karpathy.txt` ("image,caption" lines after a header),
  read as CLIP_benchmark's Flickr class does (images in first-seen order).

Captions are used as the files hold them; `ds.captions` / `ds.text_image_ids` are the flat caption
list and each caption's image index that `vlkit.evaluation.retrieval` takes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from vlkit.data.benchmarks.samples import RetrievalDataset, missing

__all__ = ["LAYOUTS", "RETRIEVAL", "coco_karpathy", "flickr30k_karpathy", "karpathy_dataset"]

LAYOUTS = {
    "mscoco_captions": (
        "dataset_coco.json (Karpathy's splits, https://cs.stanford.edu/people/karpathy/"
        "deepimagesent/caption_datasets.zip) with the images under val2014/ (and train2014/) "
        "from https://cocodataset.org/#download, or CLIP_benchmark's coco_test_karpathy.json "
        "(https://github.com/mehdidc/retrieval_annotations/releases) with val2014/"
    ),
    "flickr30k": (
        "dataset_flickr30k.json (Karpathy's splits, https://cs.stanford.edu/people/karpathy/"
        "deepimagesent/caption_datasets.zip) with the images in flickr30k-images/ (request them "
        "at https://shannon.cs.illinois.edu/DenotationGraph/), or CLIP_benchmark's "
        "flickr30k_test_karpathy.txt (https://github.com/mehdidc/retrieval_annotations/releases) "
        "next to the images"
    ),
}

_SPLITS = {"test": ("test",), "val": ("val",), "train": ("train", "restval")}


def _check_split(name: str, split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"{name}: split {split!r} is not available (allowed: test, val, train)")


def _read_json(name: str, path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{name}: cannot read {path}: {error}") from error


def _resolve(name: str, root: Path, relative: Sequence[Path], bases: Sequence[Path]) -> list[Path]:
    """The image files: `relative` under the first base folder holding the first image."""
    if not relative:
        raise ValueError(f"{name}: the annotation file lists no image of this split")
    base = next((b for b in bases if (b / relative[0]).is_file()), None)
    if base is None:
        raise missing(
            name,
            root,
            LAYOUTS[name],
            f"no image {relative[0]} in any of {', '.join(str(b) for b in bases)}",
        )
    paths = [base / r for r in relative]
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise missing(name, root, LAYOUTS[name], f"{len(absent)} images absent, e.g. {absent[0]}")
    return paths


def _karpathy_json(
    name: str, root: Path, file: Path, split: str, bases: Sequence[Path]
) -> RetrievalDataset:
    data = _read_json(name, file)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{name}: {file} has no 'images' list (Karpathy split format)")
    relative, captions = [], []
    for i, entry in enumerate(data["images"]):
        if entry.get("split") not in _SPLITS[split]:
            continue
        if "filename" not in entry or not entry.get("sentences"):
            raise ValueError(f"{name}: {file} images[{i}] needs 'filename' and 'sentences'")
        relative.append(Path(entry.get("filepath", ""), entry["filename"]))
        captions.append([str(s["raw"]) for s in entry["sentences"]])
    return RetrievalDataset(name, _resolve(name, root, relative, bases), captions)


def coco_karpathy(root: Path, limit: int | None = None, split: str = "test") -> RetrievalDataset:
    """MS-COCO Karpathy split (5,000 test images, ~25k captions)."""
    name = "mscoco_captions"
    _check_split(name, split)
    root = Path(root)
    karpathy = next(
        (
            p
            for p in (root / "dataset_coco.json", root / "annotations" / "dataset_coco.json")
            if p.is_file()
        ),
        None,
    )
    if karpathy is not None:
        bases = (root, root / "images")
        dataset = _karpathy_json(name, root, karpathy, split, bases)
        return dataset.limited(limit)
    coco = root / f"coco_{split}_karpathy.json"
    if not coco.is_file():
        raise missing(name, root, LAYOUTS[name])
    data = _read_json(name, coco)
    try:
        files = {int(im["id"]): im["file_name"] for im in data["images"]}
        by_image = defaultdict(list)
        for ann in data["annotations"]:
            by_image[int(ann["image_id"])].append(str(ann["caption"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{name}: {coco} is not a COCO captions file ({error!r})") from error
    ids = sorted(files)  # torchvision's CocoCaptions: `sorted(self.coco.imgs.keys())`
    folder = root / ("train2014" if split == "train" else "val2014")
    paths = _resolve(name, root, [Path(files[i]) for i in ids], (folder,))
    return RetrievalDataset(name, paths, [by_image[i] for i in ids]).limited(limit)


def flickr30k_karpathy(
    root: Path, limit: int | None = None, split: str = "test"
) -> RetrievalDataset:
    """Flickr30k Karpathy split (1,000 test images, 5,000 captions)."""
    name = "flickr30k"
    _check_split(name, split)
    root = Path(root)
    bases = (root / "flickr30k-images", root / "flickr30k_images", root / "images", root)
    karpathy = root / "dataset_flickr30k.json"
    if karpathy.is_file():
        return _karpathy_json(name, root, karpathy, split, bases).limited(limit)
    listing = root / f"flickr30k_{split}_karpathy.txt"
    if not listing.is_file():
        raise missing(name, root, LAYOUTS[name])
    data: dict[str, list[str]] = defaultdict(list)
    lines = listing.read_text().splitlines()[1:]  # a header line first, as CLIP_benchmark skips
    for number, line in enumerate(lines, 2):
        line = line.strip()
        if not line:
            continue
        # CLIP_benchmark's Flickr: captions may hold commas, so split at ".jpg,".
        image, sep, caption = line.partition(".jpg,")
        if not sep:
            raise ValueError(f"{name}: {listing} line {number} is not 'image.jpg,caption'")
        data[image + ".jpg"].append(caption)
    paths = _resolve(name, root, [Path(i) for i in data], (root,))
    return RetrievalDataset(name, paths, list(data.values())).limited(limit)


RETRIEVAL = {"mscoco_captions": coco_karpathy, "flickr30k": flickr30k_karpathy}


def karpathy_dataset(
    which: str, root: str | Path, limit: int | None = None, split: str = "test"
) -> RetrievalDataset:
    """`which` = "coco" | "flickr30k" (or CLIP_benchmark's "mscoco_captions") read from `root`."""
    name = {"coco": "mscoco_captions"}.get(which, which)
    if name not in RETRIEVAL:
        raise ValueError(f"unknown retrieval dataset {which!r} (known: coco, flickr30k)")
    return RETRIEVAL[name](Path(root), limit=limit, split=split)
