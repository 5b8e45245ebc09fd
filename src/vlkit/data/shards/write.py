"""Writing image-caption pairs as WebDataset tar shards plus a `manifest.json` (see layout.py).

Shards are written with the `webdataset` library's `TarWriter`; each shard is first written as
`.tmp` and renamed when complete, so a glob never picks up a half-written shard.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from vlkit.data.datasets.image_text import (
    AnnotationRecord,
    ImageTextDataset,
    SkippedSampleWarning,
    read_annotations,
    valid_captions,
)
from vlkit.data.images import ImageLoadError, load_image
from vlkit.data.shards.layout import IMAGE_EXTENSIONS, MANIFEST, SHARD_GLOB, SHARD_NAME, one_line

__all__ = ["write_annotated_shards", "write_shards"]

_PIL_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif"}
_PIL_FORMATS |= {"TIFF": "tiff", "PPM": "ppm"}
# Examples of skip reasons kept in the manifest / command result (the count is always exact).
_MAX_REASONS = 100


def _image_extension(path: Path) -> str | None:
    """The tar extension for an image file: from its suffix, else from its header."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jpg", "jpeg"):
        return "jpg"
    if suffix in IMAGE_EXTENSIONS:
        return suffix
    # Unknown or missing suffix: ask PIL, which reads only the header here.
    try:
        with Image.open(path) as image:
            return _PIL_FORMATS.get(image.format or "")
    except (OSError, SyntaxError, ValueError):
        return None


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    old = sorted(out_dir.glob(SHARD_GLOB)) + sorted(out_dir.glob(SHARD_GLOB + ".tmp"))
    if (out_dir / MANIFEST).exists():
        old.append(out_dir / MANIFEST)
    if old and not overwrite:
        # Stale shards from a bigger earlier run would silently join a glob of this one.
        raise FileExistsError(
            f"{out_dir} already holds shards ({old[0].name}, ...); pass overwrite=True "
            "(CLI: --overwrite) to replace them, or choose another directory"
        )
    for path in old:
        path.unlink()


class _Annotated(NamedTuple):
    """What sharding needs of an `ImageTextDataset`: its folder and annotation lines."""

    root: Path
    annotations: Path
    records: list[AnnotationRecord]


_Source = ImageTextDataset | _Annotated | Iterable[tuple[str | os.PathLike[str], Any]]


def _entries(source: _Source) -> Iterator[tuple[int, Path | None, str, Any, str | None]]:
    """`(index, file, name as annotated, raw captions, problem)` for each sample."""
    if isinstance(source, (ImageTextDataset, _Annotated)):
        for index, record in enumerate(source.records):
            # Path(root) / "/abs/x.jpg" is "/abs/x.jpg": absolute paths are kept.
            path = None if record.image is None else source.root / record.image
            where = f"line {record.line} of {source.annotations}"
            problem = None if record.problem is None else f"{record.problem} ({where})"
            yield index, path, record.image or where, record.captions, problem
        return
    for index, pair in enumerate(source):
        image, captions = pair
        yield index, Path(image), os.fspath(image), captions, None


class _ShardSink:
    """Writes samples to numbered shards, each first as `.tmp` and renamed when complete."""

    def __init__(self, out_dir: Path, samples_per_shard: int) -> None:
        from webdataset import TarWriter  # imported here: only writing and reading need it

        self._tar_writer = TarWriter
        self.out_dir = out_dir
        self.samples_per_shard = samples_per_shard
        self.shards: list[dict[str, Any]] = []
        self._file: Any = None
        self._writer: Any = None
        self._count = 0

    def _open(self) -> None:
        path = self.out_dir / (SHARD_NAME.format(len(self.shards)) + ".tmp")
        self._file = open(path, "wb")  # noqa: SIM115 - closed in _close
        # encoder=False: members are written as the given bytes (the original image file);
        # a fixed mtime makes the shards byte-identical when written again.
        self._writer = self._tar_writer(self._file, encoder=False, mtime=0.0)
        self._count = 0

    def _close(self) -> None:
        self._writer.close()
        self._file.close()
        name = SHARD_NAME.format(len(self.shards))
        os.replace(self.out_dir / (name + ".tmp"), self.out_dir / name)
        self.shards.append({"file": name, "num_samples": self._count})
        self._writer = self._file = None

    def write(self, sample: dict[str, Any]) -> None:
        if self._writer is None:
            self._open()
        self._writer.write(sample)
        self._count += 1
        if self._count == self.samples_per_shard:
            self._close()

    def finish(self) -> None:
        if self._writer is not None:
            self._close()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._file.close()
            (self.out_dir / (SHARD_NAME.format(len(self.shards)) + ".tmp")).unlink(missing_ok=True)


def _write(
    source: _Source,
    out_dir: str | os.PathLike[str],
    samples_per_shard: int,
    overwrite: bool,
    verify: bool,
    description: Mapping[str, Any],
) -> dict[str, Any]:
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be at least 1, got {samples_per_shard}")
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    sink = _ShardSink(out, samples_per_shard)
    skipped, reasons = 0, []
    try:
        for index, path, name, raw_captions, problem in _entries(source):
            reason = problem
            captions: list[str] = []
            extension = None
            if reason is None:
                captions, reason = valid_captions(raw_captions)
                reason = None if reason is None else f"{path}: {reason}"
            if reason is None and not path.is_file():
                reason = f"cannot load image {path}: no such file"
            if reason is None:
                extension = _image_extension(path)
                if extension is None:
                    reason = f"cannot load image {path}: not a recognised image file"
            if reason is None and verify:
                try:
                    load_image(path)
                except ImageLoadError as error:
                    reason = str(error)
            if reason is None:
                try:
                    data = path.read_bytes()
                except OSError as error:
                    reason = f"cannot read image {path}: {error.strerror or error}"
            if reason is not None:
                reason = one_line(reason)
                skipped += 1
                if len(reasons) < _MAX_REASONS:
                    reasons.append(reason)
                warnings.warn(
                    f"not sharding sample {index}: {reason}", SkippedSampleWarning, stacklevel=3
                )
                continue
            meta = {"index": index, "image": name, "captions": captions}
            sink.write(
                {
                    "__key__": f"{index:09d}",
                    extension: data,
                    "txt": captions[0].encode("utf-8"),
                    "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
                }
            )
        sink.finish()
    except BaseException:
        sink.abort()
        raise
    if not sink.shards:
        raise ValueError(f"no usable samples to shard ({skipped} skipped, e.g. {reasons[:3]})")
    total = sum(shard["num_samples"] for shard in sink.shards)
    manifest = {
        "format": "vlkit-image-text-webdataset/1",
        "num_samples": total,
        "shards": sink.shards,
        "skipped": skipped,
        "skipped_examples": reasons,
        **description,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return {
        "out": str(out),
        "shards": [str(out / shard["file"]) for shard in sink.shards],
        "num_shards": len(sink.shards),
        "num_samples": total,
        "skipped": skipped,
        "skipped_examples": reasons,
    }


def write_shards(
    dataset_or_pairs: ImageTextDataset | Iterable[tuple[str | os.PathLike[str], Any]],
    out_dir: str | os.PathLike[str],
    samples_per_shard: int = 1000,
    *,
    overwrite: bool = False,
    verify: bool = False,
) -> list[Path]:
    """Writes image-caption pairs as WebDataset tar shards plus a `manifest.json`.

    Samples whose caption is unusable or whose image file is missing (or, with `verify`, does
    not decode) are left out with a `SkippedSampleWarning` each; their count and the first
    reasons go into the manifest. Without `verify`, corrupt images are copied as they are
    and skipped later by the loader, which reads every sample's image anyway.

    Args:
        dataset_or_pairs: An `ImageTextDataset` (its root and annotation lines are used, not
            its transform), or `(image_path, caption)` pairs where caption is a string or a
            list of strings.
        out_dir: Output folder, created if needed.
        samples_per_shard: Samples per tar file (the last one may hold fewer).
        overwrite: Replace shards and manifest already in `out_dir` (otherwise they are an
            error, since stale extra shards would silently join the new ones).
        verify: Decode every image first and leave out the ones that fail.

    Returns:
        The shard paths, in order.

    Raises:
        FileExistsError: `out_dir` holds shards and `overwrite` is False.
        ValueError: `samples_per_shard` < 1, or no sample is usable.
    """
    description: dict[str, Any] = {}
    if isinstance(dataset_or_pairs, ImageTextDataset):
        description = {
            "root": str(dataset_or_pairs.root),
            "annotations": str(dataset_or_pairs.annotations),
        }
    result = _write(dataset_or_pairs, out_dir, samples_per_shard, overwrite, verify, description)
    return [Path(path) for path in result["shards"]]


def write_annotated_shards(
    root: str | os.PathLike[str],
    annotations: str | os.PathLike[str],
    out: str | os.PathLike[str],
    samples_per_shard: int = 1000,
    image_column: str = "image",
    caption_column: str = "caption",
    *,
    format: str | None = None,
    overwrite: bool = False,
    verify: bool = False,
) -> dict[str, Any]:
    """Shards an image folder + annotation file (see `write_shards`); `vlkit data shard` calls it.

    Args:
        root: Folder the annotated image paths are relative to.
        annotations: CSV, TSV or JSONL annotation file.
        out: Output folder for the shards and `manifest.json`.
        samples_per_shard: Samples per tar file.
        image_column: Column / field holding the image path.
        caption_column: Column / field holding the caption(s).
        format: "csv", "tsv" or "jsonl"; default from the annotation file's suffix.
        overwrite: Replace existing shards in `out`.
        verify: Decode every image and leave out those that fail.

    Returns:
        A JSON-serialisable summary: `out`, `shards` (paths), `num_shards`, `num_samples`,
        `skipped` (count) and `skipped_examples` (up to 100 one-line reasons).

    Raises:
        FileNotFoundError, ValueError, FileExistsError: Bad annotation file or output folder,
            with messages naming the file (see `read_annotations`, `write_shards`).
    """
    records = read_annotations(annotations, image_column, caption_column, format)
    source = _Annotated(Path(root), Path(annotations), records)
    description = {"root": str(root), "annotations": str(annotations)}
    return _write(source, out, samples_per_shard, overwrite, verify, description)
