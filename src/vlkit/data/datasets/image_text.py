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

import csv
import json
import operator
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from vlkit.data.images import ImageLoadError, load_image

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

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class SkippedSampleWarning(UserWarning):
    """A sample was skipped because its image or caption is unusable (message names the file)."""


@dataclass(frozen=True)
class AnnotationRecord:
    """One line (CSV row or JSONL object) of an annotation file.

    Attributes:
        line: 1-based line number in the annotation file (for messages).
        image: The image path exactly as written, or None when the line has none.
        captions: The raw caption value (a string, a list for JSONL, or anything else the
            file held); checked per sample by `valid_captions`, so a bad caption costs one
            sample instead of failing the whole file.
        problem: Why the line itself is unusable (invalid JSON, missing field), else None.
    """

    line: int
    image: str | None
    captions: Any
    problem: str | None = None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _has_surrogates(text: str) -> bool:
    # Files are read with errors="surrogateescape", so bytes that are not UTF-8 show up as
    # lone surrogates (as do JSON "\ud800" escapes); neither can be encoded or tokenized.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def valid_captions(value: Any) -> tuple[list[str], str | None]:
    """The usable captions of a caption field, or why there are none.

    A string is one caption; a list holds several (JSONL). Entries that are empty or blank
    after stripping, not strings, or not valid UTF-8 are left out; when none is left the
    sample is unusable.

    Args:
        value: The raw caption field.

    Returns:
        `(captions, None)` with at least one stripped caption, or `([], reason)`.
    """
    if value is None:
        return [], "no caption"
    items = value if isinstance(value, list) else [value]
    if not items:
        return [], "empty caption list"
    captions, reasons = [], []
    for item in items:
        if not isinstance(item, str):
            reasons.append(f"caption is not text ({type(item).__name__})")
        elif _has_surrogates(item):
            reasons.append("caption is not valid UTF-8")
        elif not item.strip():
            reasons.append("empty caption")
        else:
            captions.append(item.strip())
    if captions:
        return captions, None
    return [], reasons[0] if len(reasons) == 1 else f"no usable caption ({'; '.join(reasons)})"


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


def _annotation_format(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in ("csv", "tsv", "jsonl"):
            raise ValueError(f"format must be 'csv', 'tsv' or 'jsonl', got {format!r}")
        return format
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(
            f"cannot tell the format of annotation file {path} from its suffix {suffix!r}: "
            "use .csv, .tsv, .jsonl or .ndjson, or pass format='csv' / 'jsonl'"
        )
    return _FORMATS[suffix]


def _read_csv(
    path: Path, delimiter: str, image_column: str, caption_column: str
) -> list[AnnotationRecord]:
    # utf-8-sig drops a byte-order mark (Excel writes one), which would otherwise become part
    # of the first column's name and make it "missing".
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
        reader = csv.DictReader(file, delimiter=delimiter)
        if reader.fieldnames is None:
            raise ValueError(f"annotation file {path} is empty")
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
        for column, role in ((image_column, "image"), (caption_column, "caption")):
            if column not in reader.fieldnames:
                raise ValueError(
                    f"annotation file {path} has no {role} column {column!r} in its header "
                    f"(columns: {', '.join(map(repr, reader.fieldnames))})"
                )
        records = []
        for row in reader:
            image = row.get(image_column)
            problem = None
            if image is None or not image.strip():
                problem = "no image path"
            records.append(
                AnnotationRecord(
                    reader.line_num,
                    image.strip() if image else None,
                    row.get(caption_column),
                    problem,
                )
            )
    if not records:
        raise ValueError(f"annotation file {path} has a header but no rows")
    return records


def _read_jsonl(path: Path, image_column: str, caption_column: str) -> list[AnnotationRecord]:
    records: list[AnnotationRecord] = []
    objects = 0
    has = {image_column: False, caption_column: False}
    first_error = None
    # Field names seen, only for the error message when a column is missing everywhere.
    seen_keys: set[str] = set()
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as file:
        for number, text in enumerate(file, start=1):
            if not text.strip():
                continue
            try:
                item = json.loads(text)
            except json.JSONDecodeError as error:
                first_error = first_error or f"line {number}: {error}"
                records.append(AnnotationRecord(number, None, None, f"invalid JSON ({error})"))
                continue
            if not isinstance(item, dict):
                first_error = first_error or f"line {number} is not a JSON object"
                records.append(AnnotationRecord(number, None, None, "not a JSON object"))
                continue
            objects += 1
            if len(seen_keys) < 50:
                seen_keys.update(item)
            for column in has:
                has[column] = has[column] or column in item
            image = item.get(image_column)
            problem = None
            if image_column not in item:
                problem = f"no {image_column!r} field"
            elif not isinstance(image, str) or not image.strip():
                problem = f"{image_column!r} is not a file path ({image!r})"
                image = None
            elif caption_column not in item:
                problem = f"no {caption_column!r} field"
            records.append(
                AnnotationRecord(
                    number, image.strip() if image else None, item.get(caption_column), problem
                )
            )
    if not records:
        raise ValueError(f"annotation file {path} is empty")
    if objects == 0:
        raise ValueError(f"annotation file {path} holds no JSON objects ({first_error})")
    for column, role in ((image_column, "image"), (caption_column, "caption")):
        if not has[column]:
            # A column no line has is a configuration mistake, not bad data: fail loudly.
            keys = sorted(seen_keys)
            raise ValueError(
                f"annotation file {path} has no {role} column {column!r}: no line has that "
                f"field (fields seen: {', '.join(map(repr, keys)) or 'none'})"
            )
    return records


def read_annotations(
    path: str | os.PathLike[str],
    image_column: str = "image",
    caption_column: str = "caption",
    format: str | None = None,
) -> list[AnnotationRecord]:
    """Reads the (image path, caption) lines of a CSV, TSV or JSONL annotation file.

    CSV/TSV need a header naming the columns; JSONL has one JSON object per line (blank lines
    are ignored) whose caption field may be a string or a list of strings. Lines that are
    themselves unusable (invalid JSON, a missing field on that line, an empty image path) are
    kept as records with a `problem`, so that dataset indices stay aligned with file lines
    and the bad line costs one skipped sample.

    Args:
        path: The annotation file.
        image_column: Column / field holding the image path.
        caption_column: Column / field holding the caption(s).
        format: "csv", "tsv" or "jsonl"; default from the suffix (.csv, .tsv, .jsonl,
            .ndjson).

    Returns:
        One record per data line, in file order.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Unknown format, empty file, or a column that the header (CSV) or every
            line (JSONL) lacks; the message names the file and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    kind = _annotation_format(path, format)
    if kind == "jsonl":
        return _read_jsonl(path, image_column, caption_column)
    return _read_csv(path, "\t" if kind == "tsv" else ",", image_column, caption_column)


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
