"""Image-caption pairs from a folder of images and a CSV or JSONL annotation file.

The sample contract shared by every image-text dataset in vlkit (map-style and streaming):

- A map-style dataset's `__getitem__(key)` takes an int index, or a tuple `(index, seed)` as
  yielded by `vlkit.training.sampler.ResumableBatchSampler`. With a seed, *all* randomness of
  the sample (caption choice, then the augmentation crop, in that order) comes from
  `torch.Generator().manual_seed(seed)`, so the sample's pixels and tokens depend on
  (index, seed) only: not on the DataLoader worker that loads it, the number of workers, or
  what was loaded before. A resumed run therefore reproduces every sample exactly. Without a
  seed the first caption is used and the transform draws from its own default RNG (the
  global torch RNG for `ImageTransform(train=True)`).
- A good sample is `{"image": FloatTensor (3, S, S), "text": LongTensor (L,), "index": int}`.
- A bad sample (missing, corrupt, truncated or non-image file; empty, non-text or not UTF-8
  caption; unusable annotation line) is `{"skipped": "<one-line reason naming the file>",
  "index": int}`. Datasets never raise for bad data; they also emit one `SkippedSampleWarning`
  per bad file (per process: every DataLoader worker has its own copy of the dataset, so a
  file may be reported once by each worker that meets it).
  `vlkit.data.collate.collate_image_text` drops these and passes their reasons on.

Configuration mistakes, on the other hand, raise at construction: an empty annotation file,
a header without the requested column, an unknown file format.
"""

from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from vlkit.data.datasets.annotations import AnnotationRecord, read_annotations, valid_captions
from vlkit.data.images import ImageLoadError, load_image

# AnnotationRecord, read_annotations and valid_captions live in `annotations` (re-exported).
__all__ = [
    "AnnotationRecord",
    "ImageTextDataset",
    "SampleKey",
    "SkippedSampleWarning",
    "choose_caption",
    "parse_key",
    "read_annotations",
    "valid_captions",
]

# An int index, or (index, seed) from ResumableBatchSampler.
SampleKey = int | tuple[int, int]
Transform = Callable[..., torch.Tensor]
Tokenizer = Callable[[list[str]], torch.Tensor]


class SkippedSampleWarning(UserWarning):
    """A sample was skipped because its image or caption is unusable (message names the file)."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def choose_caption(captions: Sequence[str], generator: torch.Generator | None) -> str:
    """Picks one caption: uniformly with `generator`, the first one without.

    One value is drawn from `generator` even when there is a single caption, so the draws
    that follow (the augmentation) do not depend on how many captions a sample has.
    """
    if generator is None:
        return captions[0]
    choice = int(torch.randint(len(captions), (1,), generator=generator).item())
    return captions[choice]


def parse_key(key: Any, length: int) -> tuple[int, int | None]:
    """Splits a dataset key into `(index, seed)`.

    Args:
        key: An int-like index, or `(index, seed)`.
        length: Dataset length; negative indices count from the end.

    Returns:
        The non-negative index and the seed (None when the key has none).

    Raises:
        IndexError: The index is out of range.
        TypeError: The key is neither an int nor an `(index, seed)` pair.
    """
    if isinstance(key, (tuple, list)):
        if len(key) != 2:
            raise TypeError(f"a dataset key must be an index or (index, seed), got {key!r}")
        index, seed = operator.index(key[0]), operator.index(key[1])
    else:
        index, seed = operator.index(key), None
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"index {key!r} out of range for a dataset of {length} samples")
    return index, seed


class _WarnOnce:
    """Emits one `SkippedSampleWarning` per file (per process)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, file: str, reason: str) -> None:
        if file not in self.seen:
            self.seen.add(file)
            warnings.warn(f"skipping sample: {reason}", SkippedSampleWarning, stacklevel=3)


class ImageTextDataset(Dataset):
    """Images under a folder with captions from a CSV / JSONL file, for contrastive training.

    Follows the sample contract in this module's docstring: `dataset[i]` or
    `dataset[(i, seed)]` returns `{"image", "text", "index"}` or `{"skipped", "index"}`.

    Args:
        root: Folder the image paths are relative to (absolute paths are used as they are).
        annotations: CSV, TSV or JSONL file with one line per image (see `read_annotations`).
        transform: Called as `transform(pil_image, generator=generator)` and returning a
            `(3, S, S)` float tensor, e.g. `vlkit.data.transforms.ImageTransform`.
        tokenizer: Called as `tokenizer([caption])` and returning a `(1, L)` long tensor,
            e.g. `vlkit.get_tokenizer("clip")`.
        image_column: Column / field holding the image path.
        caption_column: Column / field holding the caption (JSONL: or a list of captions, one
            of which is picked per sample).
        format: "csv", "tsv" or "jsonl"; default from the annotation file's suffix.

    Raises:
        FileNotFoundError, ValueError: As `read_annotations`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        annotations: str | os.PathLike[str],
        transform: Transform,
        tokenizer: Tokenizer,
        image_column: str = "image",
        caption_column: str = "caption",
        format: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.annotations = Path(annotations)
        self.transform = transform
        self.tokenizer = tokenizer
        self.image_column = image_column
        self.caption_column = caption_column
        self.records = read_annotations(annotations, image_column, caption_column, format)
        self._warn = _WarnOnce()

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, "
            f"annotations={str(self.annotations)!r}, samples={len(self)})"
        )

    def image_path(self, index: int) -> Path | None:
        """The image file of sample `index` (None when its line names none)."""
        image = self.records[index].image
        # Path("/root") / "/abs/x.jpg" is "/abs/x.jpg": absolute paths win, as documented.
        return None if image is None else self.root / image

    def captions(self, index: int) -> list[str]:
        """The usable captions of sample `index` (empty when it has none)."""
        return valid_captions(self.records[index].captions)[0]

    def pairs(self) -> Iterator[tuple[int, Path | None, Any, str | None]]:
        """`(index, image_path, raw_captions, problem)` per line, for `write_shards`."""
        for index, record in enumerate(self.records):
            yield index, self.image_path(index), record.captions, record.problem

    def _where(self, index: int) -> str:
        return f"line {self.records[index].line} of {self.annotations}"

    def _skip(self, index: int, file: str, reason: str) -> dict[str, Any]:
        reason = _one_line(reason)
        self._warn(file, reason)
        return {"skipped": reason, "index": index}

    def load(self, index: int) -> tuple[Image.Image, list[str]]:
        """Loads sample `index` without transforming it.

        Returns:
            The RGB image and its usable captions.

        Raises:
            ImageLoadError: The image cannot be loaded; ValueError: the line or caption is bad.
        """
        record = self.records[index]
        path = self.image_path(index)
        if record.problem is not None:
            raise ValueError(f"{self._where(index)}: {record.problem}")
        captions, problem = valid_captions(record.captions)
        if problem is not None:
            raise ValueError(f"{path}: {problem} ({self._where(index)})")
        return load_image(path), captions

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        index, seed = parse_key(key, len(self))
        record = self.records[index]
        path = self.image_path(index)
        if record.problem is not None:
            name = str(path) if path is not None else self._where(index)
            return self._skip(index, name, f"{name}: {record.problem} ({self._where(index)})")
        captions, problem = valid_captions(record.captions)
        if problem is not None:
            return self._skip(index, str(path), f"{path}: {problem} ({self._where(index)})")
        try:
            image = load_image(path, keep_mode=True)  # the transform converts as its reference does
        except ImageLoadError as error:
            # load_image's message is one line and already names the file.
            return self._skip(index, str(path), f"{error} ({self._where(index)})")
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        caption = choose_caption(captions, generator)
        pixels = self.transform(image, generator=generator)
        text = self.tokenizer([caption])[0]
        return {"image": pixels, "text": text.to(torch.long), "index": index}
