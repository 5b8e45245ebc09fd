"""The dataset objects the benchmark runner reads, and the pieces every format reader shares.

`ClassificationDataset` and `RetrievalDataset` behave like the torchvision / CLIP_benchmark
datasets they mirror: `ds[i]` is `(image, label)` or `(image, captions)`, with the image decoded
as that reference decodes it (an image file `convert("RGB")`-ed as torchvision's `pil_loader`
does; CIFAR / STL-10 arrays as RGB, MNIST as "L"; ImageNetV2 files in their own mode, as
CLIP_benchmark's `ImageNetV2Dataset` opens them), and `transform` (if set) applied to it, so a
`torch.utils.data.DataLoader` can run the model's preprocessing in its workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlkit.errors import DatasetMissing

__all__ = [
    "IMG_EXTENSIONS",
    "ArrayImages",
    "ClassificationDataset",
    "RetrievalDataset",
    "evenly_spaced",
    "image_folder_files",
    "missing",
    "open_raw",
    "open_rgb",
]

# torchvision.datasets.folder.IMG_EXTENSIONS: the files an ImageFolder lists (suffix, any case).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def missing(name: str, root: Path, layout: str, what: str = "") -> DatasetMissing:
    """The one-line error for a dataset that is not on disk: what was looked for, where, and
    the layout (which also says where to get the data)."""
    found = f" ({what})" if what else ""
    return DatasetMissing(f"{name}: not found under {root}{found}; expected there: {layout}")


def open_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """torchvision's `pil_loader`: the file decoded and converted to RGB."""
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


def open_raw(path: str | os.PathLike[str]) -> Image.Image:
    """The file decoded in its own mode (CLIP_benchmark's ImageNetV2 reader does no conversion)."""
    image = Image.open(path)
    image.load()
    return image


class ArrayImages:
    """Images stored as one uint8 array (N, H, W[, C]), decoded as torchvision's CIFAR / STL-10
    (`Image.fromarray(img)`) and MNIST (`Image.fromarray(img, mode="L")`) readers do."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __call__(self, index: int) -> Image.Image:
        return Image.fromarray(self.array[index])


def evenly_spaced(n: int, limit: int | None) -> list[int] | None:
    """`limit` indices spread evenly over range(n) (None: all), so a quick look at a folder
    sorted by class still sees every part of it."""
    if limit is None or limit >= n:
        return None
    if limit < 1:
        raise ValueError(f"limit={limit}: must be at least 1")
    return [i * n // limit for i in range(limit)]


def image_folder_files(directory: Path) -> list[tuple[str, list[Path]]]:
    """[(class folder name, its image files)] in torchvision ImageFolder's order: class folders
    sorted by name, files found by a sorted `os.walk` (links followed) and sorted by name."""
    classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    listing = []
    for name in classes:
        files = []
        for folder, _, names in sorted(os.walk(directory / name, followlinks=True)):
            files += [Path(folder, f) for f in sorted(names) if f.lower().endswith(IMG_EXTENSIONS)]
        listing.append((name, files))
    return listing


class ClassificationDataset:
    """Labelled images of one benchmark split.

    Attributes:
        name: CLIP_benchmark's dataset name.
        classes: Class names in label order (`classnames` is the same list).
        templates: Zero-shot templates with one "{}" placeholder.
        targets: The label of each sample.
        paths: The image file of each sample, or None for datasets stored as arrays.
        transform: Applied to each image in `__getitem__` when set.
    """

    def __init__(
        self,
        name: str,
        sources: Sequence[Any],
        targets: Sequence[int],
        classes: Sequence[str],
        templates: Sequence[str],
        loader: Callable[[Any], Image.Image] = open_rgb,
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        if len(sources) != len(targets):
            raise ValueError(f"{name}: {len(sources)} images but {len(targets)} labels")
        bad = [t for t in targets if not 0 <= t < len(classes)]
        if bad:
            raise ValueError(f"{name}: label {bad[0]} outside [0, {len(classes)}) classes")
        self.name = name
        self.sources = list(sources)
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.templates = list(templates)
        self.loader = loader
        self.transform = transform

    @property
    def classnames(self) -> list[str]:
        return self.classes

    @property
    def paths(self) -> list[Path] | None:
        if self.sources and isinstance(self.sources[0], Path):
            return list(self.sources)
        return None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.loader(self.sources[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def limited(self, limit: int | None) -> ClassificationDataset:
        """This dataset, or `limit` of its samples spread evenly over it (`evenly_spaced`)."""
        keep = evenly_spaced(len(self), limit)
        if keep is None:
            return self
        return ClassificationDataset(
            self.name,
            [self.sources[i] for i in keep],
            [self.targets[i] for i in keep],
            self.classes,
            self.templates,
            self.loader,
            self.transform,
        )

    def __repr__(self) -> str:
        return (
            f"ClassificationDataset({self.name!r}, {len(self)} images, {len(self.classes)} classes)"
        )


class RetrievalDataset:
    """Images with their captions (CLIP_benchmark's Flickr / CocoCaptions shape).

    Attributes:
        name: CLIP_benchmark's dataset name.
        image_paths: One file per image.
        image_captions: The captions of each image.
        captions: All captions, image by image (`vlkit.evaluation.retrieval` order).
        text_image_ids: The index into `image_paths` of each caption's image.
        transform: Applied to each image in `__getitem__` when set.
    """

    def __init__(
        self,
        name: str,
        image_paths: Sequence[Path],
        image_captions: Sequence[Sequence[str]],
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        if len(image_paths) != len(image_captions):
            raise ValueError(f"{name}: {len(image_paths)} images but {len(image_captions)} lists")
        self.name = name
        self.image_paths = [Path(p) for p in image_paths]
        self.image_captions = [list(c) for c in image_captions]
        self.transform = transform

    @property
    def captions(self) -> list[str]:
        return [caption for captions in self.image_captions for caption in captions]

    @property
    def text_image_ids(self) -> list[int]:
        return [i for i, captions in enumerate(self.image_captions) for _ in captions]

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[Any, list[str]]:
        image = open_rgb(self.image_paths[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, list(self.image_captions[index])

    def limited(self, limit: int | None) -> RetrievalDataset:
        """This dataset, or `limit` of its images (with all their captions) spread evenly."""
        keep = evenly_spaced(len(self), limit)
        if keep is None:
            return self
        return RetrievalDataset(
            self.name,
            [self.image_paths[i] for i in keep],
            [self.image_captions[i] for i in keep],
            self.transform,
        )

    def __repr__(self) -> str:
        return (
            f"RetrievalDataset({self.name!r}, {len(self)} images, "
            f"{sum(map(len, self.image_captions))} captions)"
        )
