"""Zero-shot / linear-probe classification datasets by CLIP_benchmark name.

`CLASSIFICATION[name](root, limit=None, split="test")` reads the dataset from `root`, the folder
one would pass to `clip_benchmark eval --dataset_root` for it (`vlkit benchmark --data-root DIR`
uses DIR/<task>/), and returns a `ClassificationDataset`: `len`, `ds[i] -> (image, label)`,
`classes` / `classnames`, `templates` (CLIP_benchmark's for the dataset, "{}" placeholder).
`LAYOUTS[name]` is the one-line expected layout, with where to get the data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vlkit.data.benchmarks import imagenet, torchvision_formats
from vlkit.data.benchmarks.samples import ClassificationDataset

__all__ = ["CLASSIFICATION", "LAYOUTS", "ClassificationDataset", "classification_dataset"]

DatasetBuilder = Callable[..., ClassificationDataset]

CLASSIFICATION: dict[str, DatasetBuilder] = {
    "imagenet1k": imagenet.imagenet1k,
    "imagenetv2": imagenet.imagenetv2,
    "imagenet_sketch": imagenet.imagenet_sketch,
    "imagenet-a": imagenet.imagenet_a,
    "imagenet-r": imagenet.imagenet_r,
    "cifar10": torchvision_formats.cifar10,
    "cifar100": torchvision_formats.cifar100,
    "stl10": torchvision_formats.stl10,
    "food101": torchvision_formats.food101,
    "pets": torchvision_formats.pets,
    "flowers": torchvision_formats.flowers,
    "dtd": torchvision_formats.dtd,
    "eurosat": torchvision_formats.eurosat,
    "mnist": torchvision_formats.mnist,
}

LAYOUTS: dict[str, str] = {**imagenet.LAYOUTS, **torchvision_formats.LAYOUTS}


def classification_dataset(
    name: str, root: str | Path, limit: int | None = None, split: str = "test"
) -> ClassificationDataset:
    """The dataset `name` (a key of CLASSIFICATION) read from `root`."""
    if name not in CLASSIFICATION:
        raise ValueError(
            f"unknown classification dataset {name!r} (known: {', '.join(CLASSIFICATION)})"
        )
    return CLASSIFICATION[name](Path(root), limit=limit, split=split)
