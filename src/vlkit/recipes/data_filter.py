"""`vlkit data filter`: keep the image-text pairs whose CLIP score reaches a threshold.

    vlkit data filter --model M --data pairs.csv --min-score 0.28 --out filtered/
    vlkit data filter --model M --data shards/ --min-score 0.28 --out filtered_shards/

The CLIP score of a pair is the cosine similarity of its image and caption embeddings (the
first usable caption). LAION-400M kept pairs whose ViT-B/32 score was at least 0.3, LAION-5B
0.28 (English); DataComp's "CLIP score" baselines keep a top fraction instead. Filtering
removes mismatched, noisy pairs, and it is also a bias lever (course §3.9.3): whatever the
scoring model under-scores is removed from the next model's data, so the report gives the
kept / dropped counts and the score histogram to look at.

Inputs and outputs:

- an annotation file (CSV / TSV / JSONL; image paths relative to `root`, default the file's
  folder): `out/<same file name>` in the same format with the kept lines, every original
  column kept, the image path made absolute (so the file works from anywhere) and a
  `clip_score` column added;
- a shard set (a folder written by `vlkit data shard`, or a brace pattern): `out/shard-*.tar`
  + `manifest.json` in the same layout (`vlkit.data.shards.layout`), each kept sample's members
  copied byte for byte, its JSON gaining `clip_score`.

Both also write `filter_report.json` (counts, threshold, histogram, quantiles) and
`score_histogram.png`. Pairs that cannot be scored (missing or corrupt image, no caption) are
dropped and counted as `unusable`, with their reasons. `out` holding a filter's output is
refused unless `overwrite`.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vlkit.data.datasets.annotations import read_annotations, valid_captions
from vlkit.data.images import ImageLoadError, load_image, load_image_bytes
from vlkit.data.shards.layout import MANIFEST, SHARD_GLOB, SHARD_NAME
from vlkit.data.shards.read import expand_urls, image_member, raw_samples, sample_captions
from vlkit.distributed import resolve_device
from vlkit.hub.clip_checkpoint import load_clip

__all__ = ["REPORT_FILE", "filter_by_clip_score"]

REPORT_FILE = "filter_report.json"
_MAX_REASONS = 100
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class _Scorer:
    """Scores (image, caption) pairs in batches: cosine of the unit embeddings."""

    def __init__(self, model: str, device: str, batch_size: int) -> None:
        self.model, self.tokenizer, self.transform = load_clip(model)
        self.device = resolve_device(device)
        self.model = self.model.to(self.device)
        self.batch_size = batch_size

    @torch.no_grad()
    def scores(self, images: list[Any], captions: list[str]) -> list[float]:
        pixels = torch.stack([self.transform(image) for image in images]).to(self.device)
        image = self.model.encode_image(pixels, normalize=True).float()
        tokens = self.tokenizer(captions).to(self.device)
        text = self.model.encode_text(tokens, normalize=True).float()
        return (image * text).sum(dim=-1).cpu().tolist()  # (B,) cosine similarities


def _rows(path: Path, kind: str) -> tuple[list[dict[str, Any]], list[str] | None]:
    """The annotation file's lines as dicts (CSV: with the header's field order)."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
        if kind == "jsonl":
            rows = []
            for text in file:
                if text.strip():
                    try:
                        item = json.loads(text)
                    except json.JSONDecodeError:
                        item = None
                    rows.append(item if isinstance(item, dict) else {})
            return rows, None
        reader = csv.DictReader(file, delimiter="\t" if kind == "tsv" else ",")
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        return list(reader), list(reader.fieldnames)


def _batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Tally:
    """Scores of kept and dropped pairs, and the reasons of unusable ones."""

    def __init__(self) -> None:
        self.scores: list[float] = []
        self.kept = 0
        self.unusable = 0
        self.reasons: list[str] = []

    def unusable_pair(self, reason: str) -> None:
        self.unusable += 1
        if len(self.reasons) < _MAX_REASONS:
            self.reasons.append(" ".join(reason.split()))


def _filter_annotations(path: Path, root: Path, out: Path, scorer: _Scorer, min_score: float,
                        image_column: str, caption_column: str, tally: _Tally,
                        progress: bool) -> Path:  # fmt: skip
    kind = _FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"--data {path}: use a .csv, .tsv or .jsonl file, or a shard folder")
    records = read_annotations(path, image_column, caption_column, kind)
    rows, fields = _rows(path, kind)

    def usable() -> Iterator[tuple[int, Any, str]]:
        for index, record in enumerate(records):
            where = f"line {record.line} of {path}"
            captions, problem = valid_captions(record.captions)
            if record.problem or problem:
                tally.unusable_pair(f"{where}: {record.problem or problem}")
                continue
            try:
                image = load_image(root / record.image)
            except ImageLoadError as error:
                tally.unusable_pair(f"{error} ({where})")
                continue
            yield index, image, captions[0]

    kept: list[dict[str, Any]] = []
    bar = tqdm(total=len(records), desc="CLIP score", unit="pair", disable=not progress)
    for batch in _batched(usable(), scorer.batch_size):
        scores = scorer.scores([image for _, image, _ in batch], [text for _, _, text in batch])
        for (index, _, _), score in zip(batch, scores, strict=True):
            tally.scores.append(score)
            if score >= min_score:
                row = dict(rows[index])
                row[image_column] = str((root / records[index].image).resolve())
                row["clip_score"] = round(score, 6)
                kept.append(row)
        bar.update(len(batch))
    bar.close()
    tally.kept = len(kept)
    target = out / path.name
    with open(target, "w", encoding="utf-8", newline="") as file:
        if kind == "jsonl":
            for row in kept:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            columns = (fields or []) + (
                ["clip_score"] if "clip_score" not in (fields or []) else []
            )
            writer = csv.DictWriter(file, columns, delimiter="\t" if kind == "tsv" else ",")
            writer.writeheader()
            writer.writerows(kept)
    return target


def _filter_shards(data: str, out: Path, scorer: _Scorer, min_score: float,
                   samples_per_shard: int, tally: _Tally, progress: bool) -> Path:  # fmt: skip
    from webdataset import TarWriter

    shards: list[dict[str, Any]] = []
    writer: Any = None
    file: Any = None

    def write(raw: dict[str, Any], score: float) -> None:
        nonlocal writer, file
        if writer is None:
            file = open(out / SHARD_NAME.format(len(shards)), "wb")  # noqa: SIM115
            writer = TarWriter(file, encoder=False, mtime=0.0)  # members as the given bytes
            shards.append({"file": SHARD_NAME.format(len(shards)), "num_samples": 0})
        meta = json.loads(raw["json"]) if "json" in raw else {}
        meta = meta if isinstance(meta, dict) else {}
        members = {k: v for k, v in raw.items() if not k.startswith("__")}
        members["json"] = json.dumps({**meta, "clip_score": round(score, 6)}).encode("utf-8")
        writer.write({"__key__": raw["__key__"], **members})
        shards[-1]["num_samples"] += 1
        if shards[-1]["num_samples"] == samples_per_shard:
            writer.close()
            file.close()
            writer = None

    def usable() -> Iterator[tuple[dict[str, Any], Any, str]]:
        for url in expand_urls(data):
            for raw in raw_samples(url):
                if "__error__" in raw:
                    tally.unusable_pair(raw["__error__"])
                    continue
                name = f"{url}:{raw['__key__']}"
                _, captions, problem = sample_captions(raw)
                extension = image_member(raw)
                if problem or extension is None:
                    tally.unusable_pair(f"{name}: {problem or 'no image in the sample'}")
                    continue
                try:
                    image = load_image_bytes(raw[extension], name=f"{name}.{extension}")
                except ImageLoadError as error:
                    tally.unusable_pair(str(error))
                    continue
                yield raw, image, captions[0]

    bar = tqdm(desc="CLIP score", unit="pair", disable=not progress)
    try:
        for batch in _batched(usable(), scorer.batch_size):
            scores = scorer.scores([image for _, image, _ in batch], [t for _, _, t in batch])
            for (raw, _, _), score in zip(batch, scores, strict=True):
                tally.scores.append(score)
                if score >= min_score:
                    tally.kept += 1
                    write(raw, score)
            bar.update(len(batch))
    finally:
        bar.close()
        if writer is not None:
            writer.close()
            file.close()
    manifest = {"format": "vlkit-image-text-webdataset/1", "num_samples": tally.kept,
                "shards": shards, "filtered_from": str(data), "min_clip_score": min_score}  # fmt: skip
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out / MANIFEST


def _histogram_plot(scores: np.ndarray, edges: np.ndarray, min_score: float, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.hist(scores, bins=edges, color="tab:blue")
    ax.axvline(min_score, color="tab:red", linestyle="--", label=f"min score {min_score:g}")
    ax.set_xlabel("CLIP score (image-caption cosine similarity)")
    ax.set_ylabel("pairs")
    ax.set_title(f"CLIP scores: {int((scores >= min_score).sum())} kept of {len(scores)} scored")
    ax.legend()
    figure.savefig(path, dpi=100)


def _is_shard_set(data: str) -> bool:
    path = Path(data)
    if path.is_dir():
        return True
    return data.endswith(".tar") or ("{" in data and ".tar" in data)


def filter_by_clip_score(
    model: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    min_score: float,
    root: str | os.PathLike[str] | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    samples_per_shard: int = 1000,
    batch_size: int = 64,
    bins: int = 20,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Filters an annotation file or a shard set by CLIP score (see the module docstring).

    Returns:
        The report: `input`, `output`, `min_score`, `scored`, `kept`, `dropped_low_score`,
        `unusable`, `unusable_examples`, `histogram` (`edges`, `counts`), `quantiles`.

    Raises:
        FileExistsError: `out` holds a filter's output and `overwrite` is False.
        FileNotFoundError, ValueError: Bad data or model (the message names it).
    """
    data, out = os.fspath(data), Path(out)
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; pass --overwrite or choose another --out")
    shards = _is_shard_set(data)
    if not shards and not Path(data).is_file():
        raise FileNotFoundError(f"--data {data}: no such file or shard folder")
    scorer = _Scorer(os.fspath(model), device, batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    tally = _Tally()
    try:
        if shards:
            output = _filter_shards(data, staging, scorer, min_score, samples_per_shard, tally,
                                    progress)  # fmt: skip
        else:
            folder = Path(root) if root is not None else Path(data).parent
            output = _filter_annotations(Path(data), folder, staging, scorer, min_score,
                                         image_column, caption_column, tally, progress)  # fmt: skip
        scores = np.asarray(tally.scores, dtype=np.float64)
        low = min(float(scores.min()), min_score) if len(scores) else min_score - 0.5
        high = max(float(scores.max()), min_score) if len(scores) else min_score + 0.5
        counts, edges = np.histogram(scores, bins=bins, range=(low, high))
        report = {
            "input": data, "output": str(out / output.name), "min_score": min_score,
            "scored": len(scores), "kept": tally.kept,
            "dropped_low_score": len(scores) - tally.kept, "unusable": tally.unusable,
            "unusable_examples": tally.reasons,
            "histogram": {"edges": edges.round(6).tolist(), "counts": counts.tolist()},
            "quantiles": {f"p{q}": float(np.quantile(scores, q / 100)) if len(scores) else None
                          for q in (5, 25, 50, 75, 95)},
        }  # fmt: skip
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        _histogram_plot(scores, edges, min_score, staging / "score_histogram.png")
        out.mkdir(exist_ok=True)
        if overwrite:  # stale shards of a bigger earlier run would join a glob of this one
            for old in out.glob(SHARD_GLOB):
                old.unlink()
        for item in staging.iterdir():
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report
