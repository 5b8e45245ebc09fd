"""One metadata column of an annotation file, aligned with the dataset's samples.

An annotation file often carries more than the image and its caption: a class, a sensitive
attribute, a source. The balanced sampler (`vlkit.training.balanced_sampler`) and the bias audit
(`vlkit.recipes.bias_audit`) group samples by such a column. The values come back in the order
and number of `read_annotations`' records (one per CSV row, one per non-blank JSONL line, bad
lines included), so value `i` belongs to `ImageTextDataset(...)[i]`.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

__all__ = ["MISSING_VALUE", "read_metadata_column"]

# The group of a line whose column is empty, absent or not a scalar (a bad JSONL line too):
# such samples still form a group of their own rather than silently vanishing.
MISSING_VALUE = "(missing)"

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _value(raw: object) -> str:
    if raw is None or isinstance(raw, (dict, list)):
        return MISSING_VALUE
    text = str(raw).strip()
    return text or MISSING_VALUE


def read_metadata_column(
    path: str | os.PathLike[str], column: str, format: str | None = None
) -> list[str]:
    """The values of `column`, one string per annotation record (see the module docstring).

    Args:
        path: A CSV, TSV or JSONL annotation file.
        column: The column (CSV header) or field (JSONL) to read.
        format: "csv", "tsv" or "jsonl"; default from the suffix.

    Returns:
        One value per record; `MISSING_VALUE` where the line has none.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Unknown format, or no line has `column` (the message lists the columns).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    kind = format or _FORMATS.get(path.suffix.lower())
    if kind not in ("csv", "tsv", "jsonl"):
        raise ValueError(f"annotation file {path}: unknown format (use .csv, .tsv or .jsonl)")
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
        if kind == "jsonl":
            values, seen = [], set()
            for text in file:
                if not text.strip():
                    continue
                try:
                    item = json.loads(text)
                except json.JSONDecodeError:
                    item = None
                item = item if isinstance(item, dict) else {}
                seen.update(list(item)[:50])
                values.append(_value(item.get(column)))
            fields = sorted(seen)
        else:
            reader = csv.DictReader(file, delimiter="\t" if kind == "tsv" else ",")
            reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
            fields = list(reader.fieldnames)
            values = [_value(row.get(column)) for row in reader]
    if column not in fields:
        raise ValueError(
            f"annotation file {path} has no column {column!r} "
            f"(columns: {', '.join(map(repr, fields)) or 'none'})"
        )
    return values
