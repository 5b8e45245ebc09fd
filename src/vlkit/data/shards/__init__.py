"""Image-text pairs as WebDataset tar shards: writing them, and streaming them for training.

Shard layout (written by `write_shards` with the `webdataset` library's `TarWriter`): each
sample is three tar members sharing a key, `{key}.jpg` (or `.png`, `.webp`, ...: the ORIGINAL
file's bytes, never re-encoded), `{key}.txt` (the first caption, UTF-8) and `{key}.json`
(`{"index": dataset index, "image": path as annotated, "captions": [all captions]}`). Keys are
the zero-padded dataset index, so they are unique across the shards of one dataset. Shards are
`shard-000000.tar`, `shard-000001.tar`, ... next to a `manifest.json` that records how many
samples each shard holds (used to plan a mid-epoch resume without reading the shards).

Streaming (`WebDatasetImageText`, `webdataset_loader`): shards are read with `webdataset`'s tar
iterators and follow the sample contract of `vlkit.data.datasets.image_text` (bad samples
become `{"skipped": reason}` entries naming `shard:key`, plus one warning each). Each epoch:

1. the shard list is permuted with a generator seeded by (seed, epoch), identically on all
   ranks (unless shuffling is off);
2. rank r takes shards r, r + world_size, ... (node split), and DataLoader worker w of that rank
   takes every num_workers-th of those (worker split): the shards are disjoint across all
   (rank, worker) pairs and together cover the list;
3. each worker streams its shards in order through a shuffle buffer of raw (undecoded) samples
   seeded by (seed, epoch, rank, worker), decodes, transforms, tokenizes and yields whole
   batches collated by `collate_image_text`; the DataLoader (`batch_size=None`) takes them from
   the workers round-robin.

Determinism guarantees, stated exactly:

- The pixels and tokens of a sample (crop, caption choice) depend only on (seed, epoch, shard
  file name, sample key): the same in every run, whatever the worker count.
- The *order* of batches a rank sees is a function of (shard list, seed, epoch, rank,
  world_size, num_workers, batch_size, shuffle_buffer, drop_last). Changing the number of
  DataLoader workers (or GPUs) changes which shards go together and so the order; it is NOT
  reproducible across different worker counts, unlike the map-style path
  (`ResumableBatchSampler`), which is.
- Mid-epoch resume (`resume_samples`) is exact: given the same settings as the interrupted
  run and the number of samples this rank had consumed (every sample of every batch already
  taken, skipped ones included, so always a batch boundary), the resumed loader yields
  exactly the batches the uninterrupted run would have yielded next, in the same order.
  Workers skip the consumed samples without decoding them (the bytes are still read, and the
  shuffle buffer replayed). Planning this needs the sample count of every shard of the rank:
  taken from `shard_sizes`, else `manifest.json` next to local shards, else by reading the
  shards once.
- Not covered: a shard that changes, disappears or is truncated between the runs, and shards
  whose manifest counts are wrong; a DataLoader with `in_order=False`.
- Ranks may get different numbers of samples (shards differ in size, and shards do not
  always divide evenly among ranks), hence different numbers of batches; a distributed
  trainer must stop all ranks at the same step (e.g. after the smallest `num_batches`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import struct
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vlkit.data.collate import collate_image_text
from vlkit.data.datasets.image_text import (
    AnnotationRecord,
    ImageTextDataset,
    SkippedSampleWarning,
    Tokenizer,
    Transform,
    choose_caption,
    read_annotations,
    valid_captions,
)
from vlkit.data.images import ImageLoadError, load_image, to_rgb

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST",
    "WebDatasetImageText",
    "epoch_shards",
    "expand_urls",
    "shard_command",
    "split_shards",
    "webdataset_loader",
    "write_shards",
]

# Tar member extensions read as the sample's image, in order of preference.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    "jpg",
    "jpeg",
    "png",
    "webp",
    "bmp",
    "gif",
    "tif",
    "tiff",
    "ppm",
)
MANIFEST = "manifest.json"
_SHARD_NAME = "shard-{:06d}.tar"
_SHARD_GLOB = "shard-*.tar"
_PIL_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif"}
_PIL_FORMATS |= {"TIFF": "tiff", "PPM": "ppm"}
# Examples of skip reasons kept in the manifest / command result (the count is always exact).
_MAX_REASONS = 100


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _mix(*parts: object) -> int:
    """A 63-bit seed from any values; stable across processes and Python versions."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


# --------------------------------------------------------------------------------------------
# Writing shards


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
    old = sorted(out_dir.glob(_SHARD_GLOB)) + sorted(out_dir.glob(_SHARD_GLOB + ".tmp"))
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
        path = self.out_dir / (_SHARD_NAME.format(len(self.shards)) + ".tmp")
        self._file = open(path, "wb")  # noqa: SIM115 - closed in _close
        # encoder=False: members are written as the given bytes (the original image file);
        # a fixed mtime makes the shards byte-identical when written again.
        self._writer = self._tar_writer(self._file, encoder=False, mtime=0.0)
        self._count = 0

    def _close(self) -> None:
        self._writer.close()
        self._file.close()
        name = _SHARD_NAME.format(len(self.shards))
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
            (self.out_dir / (_SHARD_NAME.format(len(self.shards)) + ".tmp")).unlink(missing_ok=True)


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
                reason = _one_line(reason)
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


def shard_command(
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
    """`vlkit data shard`: shards an image folder + annotation file (see `write_shards`).

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


# --------------------------------------------------------------------------------------------
# Reading shards


def expand_urls(urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """The shard list: a folder of shards, a brace pattern, or a list of paths / URLs.

    A folder is read through its `manifest.json` when it has one, else every `*.tar` in it,
    sorted. A string is expanded like webdataset does (`"a-{000..009}.tar"`, `::` joins
    several patterns).
    """
    if isinstance(urls, (str, os.PathLike)):
        text = os.fspath(urls)
        if os.path.isdir(text):
            folder = Path(text)
            manifest = folder / MANIFEST
            if manifest.is_file():
                shards = json.loads(manifest.read_text())["shards"]
                return [str(folder / shard["file"]) for shard in shards]
            found = sorted(str(path) for path in folder.glob("*.tar"))
            if not found:
                raise FileNotFoundError(f"no .tar shards in {folder}")
            return found
        from webdataset.shardlists import expand_urls as wds_expand

        return list(wds_expand(text))
    return [os.fspath(url) for url in urls]


def epoch_shards(urls: Sequence[str], seed: int, epoch: int, shuffle: bool = True) -> list[str]:
    """The shard order of one epoch: a permutation seeded by (seed, epoch), same on all ranks."""
    shards = list(urls)
    if shuffle:
        random.Random(_mix("shards", seed, epoch)).shuffle(shards)
    return shards


def split_shards(
    shards: Sequence[str], rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1
) -> list[str]:
    """The shards of one (rank, DataLoader worker): every world_size-th, then every num_workers-th.

    Same split as `webdataset.split_by_node` followed by `webdataset.split_by_worker`, but with
    explicit arguments, so it does not depend on torch.distributed being initialised. Over all
    (rank, worker) pairs the results are disjoint and cover `shards`.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker {worker} is not in [0, {num_workers})")
    return list(shards)[rank::world_size][worker::num_workers]


def _decode_image(data: bytes) -> Image.Image:
    # Same steps as vlkit.data.images.load_image, on bytes instead of a file.
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened)
    return to_rgb(image)


_DECODE_ERRORS = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
)


def _shuffled(items: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """A shuffle buffer of `size` items (no shuffling for size <= 1)."""
    if size <= 1:
        yield from items
        return
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = rng.randrange(size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


class WebDatasetImageText(IterableDataset):
    """Streams image-text WebDataset shards as collated batches (see the module docstring).

    Use it with `DataLoader(dataset, batch_size=None, num_workers=...)` (what
    `webdataset_loader` builds). Each item is a batch from `collate_image_text`:
    `{"images", "texts", "indices", "skipped"}`; `indices` are the dataset indices stored
    in the shards' JSON (else the numeric key, else -1). A shard that cannot be opened or
    is truncated gives one `skipped` entry (index -1) naming it, and the rest of that shard
    is lost. Warnings are emitted once per sample per worker process. Build a new one for
    each epoch.

    Args:
        urls: Shard folder, brace pattern or list (see `expand_urls`).
        transform: Called as `transform(pil_image, generator=generator)`.
        tokenizer: Called as `tokenizer([caption])`, returning `(1, L)`.
        batch_size: Samples per batch on this rank (skipped samples included, so a batch may
            hold fewer good ones).
        seed: Run seed.
        shuffle_buffer: Raw samples held per worker for shuffling (memory: that many encoded
            images); 0 or 1 keeps the stored order.
        rank: This process's rank.
        world_size: Number of processes.
        epoch: The epoch (new shard order, shuffle and augmentation each epoch).
        resume_samples: Samples of this epoch this rank has already consumed (a batch
            boundary: the total size of the batches taken, skipped samples included).
        drop_last: Drop each worker's last incomplete batch (every worker has one).
        shuffle_shards: Permute the shards each epoch; default: when `shuffle_buffer` > 1.
        shard_sizes: Sample count per shard (by URL or file name), for resume planning;
            default: `manifest.json` next to the shards, else counted by reading them.

    Raises:
        ValueError: Fewer shards than ranks, or invalid sizes / rank.
    """

    def __init__(
        self,
        urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        transform: Transform,
        tokenizer: Tokenizer,
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
        resume_samples: int = 0,
        *,
        drop_last: bool = False,
        shuffle_shards: bool | None = None,
        shard_sizes: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.urls = expand_urls(urls)
        if not self.urls:
            raise ValueError("no shards given")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if resume_samples < 0:
            raise ValueError(f"resume_samples must be >= 0, got {resume_samples}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if len(self.urls) < world_size:
            # A rank without shards would yield nothing while the others wait for it.
            raise ValueError(
                f"{len(self.urls)} shards cannot be split over {world_size} processes; "
                "write more, smaller shards (samples_per_shard)"
            )
        self.transform = transform
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.rank = rank
        self.world_size = world_size
        self.epoch = epoch
        self.resume_samples = resume_samples
        self.drop_last = drop_last
        self.shuffle_shards = shuffle_buffer > 1 if shuffle_shards is None else shuffle_shards
        self.shard_sizes = dict(shard_sizes or {})
        self._plans: dict[int, list[tuple[int, int]]] = {}
        self._warned: set[str] = set()

    # -- shard assignment -------------------------------------------------------------------

    @property
    def rank_shards(self) -> list[str]:
        """This rank's shards for this epoch, in reading order."""
        shards = epoch_shards(self.urls, self.seed, self.epoch, self.shuffle_shards)
        return split_shards(shards, self.rank, self.world_size)

    def worker_shards(self, worker: int, num_workers: int) -> list[str]:
        """The shards DataLoader worker `worker` of `num_workers` reads (before resume)."""
        return split_shards(self.rank_shards, worker=worker, num_workers=num_workers)

    def _shard_size(self, url: str, manifests: dict[str, dict[str, int]]) -> int:
        for name in (url, os.path.basename(url)):
            if name in self.shard_sizes:
                return int(self.shard_sizes[name])
        folder = os.path.dirname(url)
        if folder not in manifests:
            manifests[folder] = {}
            manifest = Path(folder or ".") / MANIFEST
            if "://" not in url and not url.startswith("pipe:") and manifest.is_file():
                data = json.loads(manifest.read_text())
                manifests[folder] = {s["file"]: int(s["num_samples"]) for s in data["shards"]}
        size = manifests[folder].get(os.path.basename(url))
        if size is None:
            # No record of it: count by reading the shard (bytes only, nothing decoded).
            size = sum(1 for _ in self._raw_samples(url))
        return size

    def worker_sample_counts(self, num_workers: int) -> list[int]:
        """Samples each of `num_workers` DataLoader workers streams this epoch (no resume)."""
        manifests: dict[str, dict[str, int]] = {}
        sizes = {url: self._shard_size(url, manifests) for url in self.rank_shards}
        return [
            sum(sizes[url] for url in self.worker_shards(worker, num_workers))
            for worker in range(num_workers)
        ]

    def _batch_sizes(self, count: int) -> list[int]:
        full, rest = divmod(count, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest and not self.drop_last else [])

    def num_batches(self, num_workers: int = 0) -> int:
        """Batches this rank yields this epoch from its start (needs the shard sizes)."""
        counts = self.worker_sample_counts(max(num_workers, 1))
        return sum(len(self._batch_sizes(count)) for count in counts)

    def resume_plan(self, num_workers: int) -> list[tuple[int, int]]:
        """For each DataLoader worker slot: which original worker's stream it plays, and how
        many of that stream's samples to skip.

        The DataLoader takes batches from its workers round-robin (0, 1, ..., skipping
        exhausted ones), so the uninterrupted stream is batch k of worker w in (k, w) order.
        After `resume_samples`, the next batch is (k0, w0); a fresh DataLoader starts again at
        worker 0, so slot j plays original worker (w0 + j) % num_workers, which makes its
        round-robin order the uninterrupted one.

        Raises:
            ValueError: `resume_samples` is past the end or not on a batch boundary.
        """
        num_workers = max(num_workers, 1)
        if num_workers in self._plans:
            return self._plans[num_workers]
        if self.resume_samples == 0:
            plan = [(worker, 0) for worker in range(num_workers)]
            self._plans[num_workers] = plan
            return plan
        batches = [self._batch_sizes(c) for c in self.worker_sample_counts(num_workers)]
        consumed = [0] * num_workers
        remaining = self.resume_samples
        next_worker = None
        for k in range(max(map(len, batches), default=0)):
            for worker in range(num_workers):
                if k >= len(batches[worker]):
                    continue
                if remaining == 0:
                    next_worker = worker
                    break
                size = batches[worker][k]
                if size > remaining:
                    before = self.resume_samples - remaining
                    raise ValueError(
                        f"resume_samples={self.resume_samples} is not on a batch boundary of "
                        f"this stream (nearest: {before} and {before + size}); pass the number "
                        "of samples in the batches already taken, skipped ones included, with "
                        "the same batch_size, num_workers, world_size and seed"
                    )
                remaining -= size
                consumed[worker] += size
            if next_worker is not None:
                break
        if remaining > 0:
            total = self.resume_samples - remaining
            raise ValueError(
                f"resume_samples={self.resume_samples} is more than this rank's epoch holds "
                f"({total} samples)"
            )
        start = 0 if next_worker is None else next_worker
        plan = [
            ((start + slot) % num_workers, consumed[(start + slot) % num_workers])
            for slot in range(num_workers)
        ]
        self._plans[num_workers] = plan
        return plan

    # -- reading ------------------------------------------------------------------------------

    def _warn(self, name: str, reason: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            warnings.warn(f"skipping sample: {reason}", SkippedSampleWarning, stacklevel=3)

    def _raw_samples(self, url: str) -> Iterator[dict[str, Any]]:
        """Undecoded samples of one shard; a shard error ends it with an `__error__` entry."""
        from webdataset.gopen import gopen
        from webdataset.tariterators import group_by_keys, tar_file_iterator

        errors: list[str] = []

        def files(stream: Any) -> Iterator[dict[str, Any]]:
            iterator = tar_file_iterator(stream)
            while True:
                try:
                    member = next(iterator)
                except StopIteration:
                    return
                except Exception as error:  # tarfile raises several types for bad data
                    errors.append(f"shard {url} is truncated or corrupt: {_one_line(error)}")
                    return
                member["__url__"] = url
                yield member

        def on_group_error(error: Exception) -> bool:
            # e.g. a duplicate member name: drop that member, keep reading.
            errors.append(f"shard {url}: {_one_line(error.args[0] if error.args else error)}")
            return True

        try:
            stream = gopen(url, "rb")
        except Exception as error:
            yield {"__error__": f"cannot open shard {url}: {_one_line(error)}", "__url__": url}
            return
        try:
            yield from group_by_keys(files(stream), handler=on_group_error)
        finally:
            stream.close()
        for error in errors:
            yield {"__error__": error, "__url__": url}

    def _decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        url = raw["__url__"]
        if "__error__" in raw:
            self._warn(raw["__error__"], raw["__error__"])
            return {"skipped": raw["__error__"], "index": -1}
        key = raw["__key__"]
        name = f"{url}:{key}"
        meta: Any = {}
        if "json" in raw:
            try:
                meta = json.loads(raw["json"].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                meta = {}
        meta = meta if isinstance(meta, dict) else {}
        index = meta.get("index")
        if not isinstance(index, int):
            index = int(key) if key.isdigit() else -1

        def skip(reason: str) -> dict[str, Any]:
            reason = _one_line(reason)
            self._warn(name, reason)
            return {"skipped": reason, "index": index}

        if isinstance(meta.get("captions"), list):
            captions, problem = valid_captions(meta["captions"])
        elif "txt" in raw:
            try:
                captions, problem = valid_captions(raw["txt"].decode("utf-8"))
            except UnicodeDecodeError:
                captions, problem = [], "caption is not valid UTF-8"
        else:
            captions, problem = [], "no caption (.txt) in the sample"
        if problem is not None:
            return skip(f"{name}: {problem}")
        extension = next((ext for ext in IMAGE_EXTENSIONS if ext in raw), None)
        if extension is None:
            members = ", ".join(sorted(k for k in raw if not k.startswith("__")))
            return skip(f"{name}: no image in the sample (members: {members})")
        try:
            image = _decode_image(raw[extension])
        except _DECODE_ERRORS as error:
            return skip(f"cannot decode image {name}.{extension}: {_one_line(error)}")
        # Keyed by shard file name and key, not position: independent of order and workers.
        generator = torch.Generator().manual_seed(
            _mix("sample", self.seed, self.epoch, os.path.basename(url), key)
        )
        caption = choose_caption(captions, generator)
        pixels = self.transform(image, generator=generator)
        text = self.tokenizer([caption])[0]
        return {"image": pixels, "text": text.to(torch.long), "index": index}

    def samples(
        self, worker: int = 0, num_workers: int = 1, skip: int = 0
    ) -> Iterator[dict[str, Any]]:
        """The decoded samples of one worker's stream, after skipping `skip` of them."""
        rng = random.Random(_mix("buffer", self.seed, self.epoch, self.rank, worker, num_workers))
        raw = (s for url in self.worker_shards(worker, num_workers) for s in self._raw_samples(url))
        for position, sample in enumerate(_shuffled(raw, self.shuffle_buffer, rng)):
            # Skipped positions still go through the shuffle buffer (so it ends up in the same
            # state) but are never decoded.
            if position >= skip:
                yield self._decode(sample)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        slot, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        worker, skip = self.resume_plan(num_workers)[slot]
        batch: list[dict[str, Any]] = []
        for sample in self.samples(worker, num_workers, skip):
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield collate_image_text(batch)
                batch = []
        if batch and not self.drop_last:
            yield collate_image_text(batch)


def webdataset_loader(
    urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    transform: Transform,
    tokenizer: Tokenizer,
    batch_size: int,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    resume_samples: int = 0,
    *,
    drop_last: bool = False,
    shuffle_shards: bool | None = None,
    shard_sizes: Mapping[str, int] | None = None,
    pin_memory: bool = False,
    worker_init_fn: Callable[[int], None] | None = None,
) -> DataLoader:
    """A DataLoader over image-text shards for one epoch of one rank.

    Builds a `WebDatasetImageText` (all arguments as there) and wraps it in
    `DataLoader(batch_size=None, num_workers=num_workers)`. The resume plan is computed here,
    in the main process, so a `resume_samples` off a batch boundary fails now rather than
    inside a worker. Batches are dicts from `collate_image_text`. Call once per epoch.

    Returns:
        The DataLoader.
    """
    dataset = WebDatasetImageText(
        urls,
        transform,
        tokenizer,
        batch_size,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        rank=rank,
        world_size=world_size,
        epoch=epoch,
        resume_samples=resume_samples,
        drop_last=drop_last,
        shuffle_shards=shuffle_shards,
        shard_sizes=shard_sizes,
    )
    dataset.resume_plan(num_workers)
    shards = len(dataset.rank_shards)
    if num_workers > shards:
        warnings.warn(
            f"rank {rank} has {shards} shards for {num_workers} DataLoader workers: "
            f"{num_workers - shards} workers will sit idle (write more, smaller shards)",
            stacklevel=2,
        )
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=worker_init_fn,
    )
