"""Streaming image-text shards as batches, split over ranks and DataLoader workers, resumable.

`WebDatasetImageText` reads shards (read.py) and follows the sample contract of
`vlkit.data.datasets.image_text` (bad samples become `{"skipped": reason}` entries naming
`shard:key`, plus one warning each); `webdataset_loader` wraps one in a DataLoader. Each epoch:

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

import json
import os
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vlkit.data.collate import collate_image_text
from vlkit.data.datasets.image_text import (
    SkippedSampleWarning,
    Tokenizer,
    Transform,
    choose_caption,
)
from vlkit.data.images import ImageLoadError, load_image_bytes
from vlkit.data.shards.layout import MANIFEST, one_line
from vlkit.data.shards.read import (
    epoch_shards,
    expand_urls,
    image_member,
    raw_samples,
    sample_captions,
    seed_from,
    split_shards,
)

__all__ = ["WebDatasetImageText", "webdataset_loader"]


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
            size = sum(1 for _ in raw_samples(url))
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

    def _decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        url = raw["__url__"]
        if "__error__" in raw:
            self._warn(raw["__error__"], raw["__error__"])
            return {"skipped": raw["__error__"], "index": -1}
        key = raw["__key__"]
        name = f"{url}:{key}"
        index, captions, problem = sample_captions(raw)

        def skip(reason: str) -> dict[str, Any]:
            reason = one_line(reason)
            self._warn(name, reason)
            return {"skipped": reason, "index": index}

        if problem is not None:
            return skip(f"{name}: {problem}")
        extension = image_member(raw)
        if extension is None:
            members = ", ".join(sorted(k for k in raw if not k.startswith("__")))
            return skip(f"{name}: no image in the sample (members: {members})")
        try:
            image = load_image_bytes(raw[extension], name=f"{name}.{extension}")
        except ImageLoadError as error:
            return skip(str(error))
        # Keyed by shard file name and key, not position: independent of order and workers.
        generator = torch.Generator().manual_seed(
            seed_from("sample", self.seed, self.epoch, os.path.basename(url), key)
        )
        caption = choose_caption(captions, generator)
        pixels = self.transform(image, generator=generator)
        text = self.tokenizer([caption])[0]
        return {"image": pixels, "text": text.to(torch.long), "index": index}

    def samples(
        self, worker: int = 0, num_workers: int = 1, skip: int = 0
    ) -> Iterator[dict[str, Any]]:
        """The decoded samples of one worker's stream, after skipping `skip` of them."""
        rng = random.Random(
            seed_from("buffer", self.seed, self.epoch, self.rank, worker, num_workers)
        )
        raw = (s for url in self.worker_shards(worker, num_workers) for s in raw_samples(url))
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
    dataset: WebDatasetImageText,
    num_workers: int = 0,
    *,
    pin_memory: bool = False,
    worker_init_fn: Callable[[int], None] | None = None,
) -> DataLoader:
    """A DataLoader over one epoch of one rank's shards.

    Wraps `dataset` in `DataLoader(batch_size=None, num_workers=num_workers)`. The resume plan
    is computed here, in the main process, so a `resume_samples` off a batch boundary fails now
    rather than inside a worker. Batches are dicts from `collate_image_text`. Call once per
    epoch, with a new dataset.

    Args:
        dataset: What to stream: shards, transform, tokenizer, batch size, seed, rank, epoch,
            resume point (every streaming setting lives there, once).
        num_workers: DataLoader worker processes (each streams its own shards).
        pin_memory: DataLoader `pin_memory`.
        worker_init_fn: DataLoader `worker_init_fn`.

    Returns:
        The DataLoader.

    Raises:
        ValueError: `dataset.resume_samples` is not on a batch boundary of this stream, or past
            its end.
    """
    dataset.resume_plan(num_workers)
    shards = len(dataset.rank_shards)
    if num_workers > shards:
        warnings.warn(
            f"rank {dataset.rank} has {shards} shards for {num_workers} DataLoader workers: "
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
