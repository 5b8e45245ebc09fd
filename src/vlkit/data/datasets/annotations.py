"""Annotation files: the (image path, caption) lines of a CSV, TSV or JSONL file.

Lines that are themselves unusable (invalid JSON, a missing field on that line, an empty image
path) become records with a `problem`, and a bad caption is found per sample by
`valid_captions`, so one bad line costs one skipped sample (the sample contract of
`vlkit.data.datasets.image_text`). Configuration mistakes raise at once: an empty file, a column
that the header (CSV) or every line (JSONL) lacks, an unknown format.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["AnnotationRecord", "read_annotations", "valid_captions"]

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


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
