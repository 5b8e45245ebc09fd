"""A per-sample prediction cache (JSON lines, appended as a run goes) so a run resumes where it stopped.

The first line is a header describing what the predictions depend on (task, model, prompt,
generation budget); each further line is `{"id": <sample id>, "prediction": <text>}`. Lines are
flushed and fsync'ed after every batch, so a killed run loses at most the batch in flight. A
torn last line (the process died mid-write) is dropped when the cache is reopened, and the file
rewritten without it before anything is appended. A cache whose header differs from the run's is
refused (one line naming the field), never silently mixed with new predictions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["PredictionCache", "read_json_lines"]


def read_json_lines(path: Path) -> tuple[list[Any], bool]:
    """The JSON values of a JSON-lines file written by appending, and whether its last line was
    torn (cut short by a process killed mid-write: dropped). A bad line before the last is
    refused, naming the file and line: that is damage, not an interrupted append.

    Raises:
        ValueError: A line other than the last is not JSON.
    """
    lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    values, torn = [], False
    for n, line in enumerate(lines):
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError:
            if n < len(lines) - 1:
                raise ValueError(f"{path}: line {n + 1} is not JSON") from None
            torn = True
    return values, torn


def _key(sample_id: Any) -> str:
    """The id as JSON: 1 and "1" stay different keys (VQAv2 ids are ints, GQA's strings)."""
    return json.dumps(sample_id)


class PredictionCache:
    """Predictions by sample id, read from `path` (when it exists) and appended to it.

    Args:
        path: The JSONL file.
        header: What the predictions depend on; must equal the header of an existing file.

    Raises:
        ValueError: The existing file was written for another header (the first differing field
            is named) or is not a prediction cache.
    """

    def __init__(self, path: str | Path, header: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.header = json.loads(json.dumps(dict(header)))  # as it reads back from JSON
        self.predictions: dict[str, str] = {}
        if self.path.is_file():
            self._read()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write_all()

    def _read(self) -> None:
        entries, torn = read_json_lines(self.path)
        if not entries or "header" not in entries[0]:
            raise ValueError(f"{self.path}: not a prediction cache (no header line)")
        old = entries[0]["header"]
        for field in sorted(set(old) | set(self.header)):
            if old.get(field) != self.header.get(field):
                raise ValueError(
                    f"{self.path}: cached predictions were made with {field}="
                    f"{old.get(field)!r}, this run has {self.header.get(field)!r}; "
                    "delete the file or write to another output directory"
                )
        for entry in entries[1:]:
            self.predictions[_key(entry["id"])] = str(entry["prediction"])
        if torn:
            self._write_all()

    def _write_all(self) -> None:
        """Rewrites the file (header + the predictions held), atomically."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("w", encoding="utf-8") as out:
            out.write(json.dumps({"header": self.header}) + "\n")
            for key, prediction in self.predictions.items():
                out.write(json.dumps({"id": json.loads(key), "prediction": prediction}) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)

    def __contains__(self, sample_id: Any) -> bool:
        return _key(sample_id) in self.predictions

    def __len__(self) -> int:
        return len(self.predictions)

    def get(self, sample_id: Any) -> str:
        """The cached prediction of `sample_id` (KeyError when there is none)."""
        return self.predictions[_key(sample_id)]

    def add(self, items: Iterable[tuple[Any, str]]) -> None:
        """Records (id, prediction) pairs, appended and synced to disk before returning."""
        lines = []
        for sample_id, prediction in items:
            self.predictions[_key(sample_id)] = prediction
            lines.append(json.dumps({"id": sample_id, "prediction": prediction}) + "\n")
        with self.path.open("a", encoding="utf-8") as out:
            out.write("".join(lines))
            out.flush()
            os.fsync(out.fileno())
