"""Where the trainer's batches come from: a map-style dataset or WebDataset shards.

Both answer two questions: how many batches does epoch `e` have on this process, and give me a
loader for epoch `e` starting at batch `b` (mid-epoch resume).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from vlkit.data.shards import WebDatasetImageText, webdataset_loader
from vlkit.training.balanced_sampler import BalancedBatchSampler
from vlkit.training.sampler import ResumableBatchSampler


class TrainingData(Protocol):
    def batches_in_epoch(self, epoch: int) -> int: ...

    def loader(self, epoch: int, start_batch: int) -> DataLoader: ...


class MapStyleData:
    """A map-style dataset keyed by (index, sample_seed), batched by `ResumableBatchSampler`
    (or, with `sample_weights`, by the group-balanced `BalancedBatchSampler`)."""

    def __init__(
        self,
        dataset: Dataset,
        collate: Callable,
        batch_size: int,
        seed: int,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        sample_weights: torch.Tensor | None = None,
    ) -> None:
        self.dataset, self.collate = dataset, collate
        self.sample_weights = sample_weights
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.rank, self.world_size, self.pin_memory = rank, world_size, pin_memory

    def batches_in_epoch(self, epoch: int) -> int:
        return len(self.dataset) // self.batch_size

    def loader(self, epoch: int, start_batch: int) -> DataLoader:
        if self.sample_weights is not None:
            sampler = BalancedBatchSampler(self.sample_weights, self.batch_size, self.seed, epoch,
                                           start_batch, self.rank, self.world_size)  # fmt: skip
        else:
            sampler = ResumableBatchSampler(len(self.dataset), self.batch_size, self.seed, epoch,
                                            start_batch, self.rank, self.world_size)  # fmt: skip
        # A private generator: creating the loader must not consume the global RNG, or a
        # resumed run (which creates it mid-epoch) would diverge from an uninterrupted one.
        return DataLoader(self.dataset, batch_sampler=sampler, collate_fn=self.collate,
                          num_workers=self.num_workers, generator=torch.Generator(),
                          pin_memory=self.pin_memory)  # fmt: skip


class ShardData:
    """WebDataset tar shards, split by process and DataLoader worker, one loader per epoch.

    `batch_size` is the global batch; each process streams `batch_size / world_size` samples per
    batch from its own shards. Processes can own different amounts of data, so every epoch is
    cut to the smallest process's batch count (a collective would otherwise wait forever).
    Resuming is exact for the same batch size, worker count and number of processes.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        transform: Callable,
        tokenizer: Callable,
        batch_size: int,
        seed: int,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1000,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {world_size} processes")
        self.urls, self.transform, self.tokenizer = urls, transform, tokenizer
        self.local_batch = batch_size // world_size
        self.seed, self.num_workers, self.shuffle_buffer = seed, num_workers, shuffle_buffer
        self.rank, self.world_size = rank, world_size
        self._counts: dict[int, int] = {}

    def _dataset(self, epoch: int, resume_samples: int = 0) -> WebDatasetImageText:
        return WebDatasetImageText(
            self.urls, self.transform, self.tokenizer, self.local_batch, seed=self.seed,
            shuffle_buffer=self.shuffle_buffer, rank=self.rank, world_size=self.world_size,
            epoch=epoch, resume_samples=resume_samples, drop_last=True,
        )  # fmt: skip

    def batches_in_epoch(self, epoch: int) -> int:
        if epoch not in self._counts:
            count = torch.tensor(self._dataset(epoch).num_batches(self.num_workers))
            if self.world_size > 1:
                import torch.distributed as dist

                dist.all_reduce(count, op=dist.ReduceOp.MIN)
            self._counts[epoch] = int(count)
        return self._counts[epoch]

    def loader(self, epoch: int, start_batch: int) -> DataLoader:
        dataset = self._dataset(epoch, resume_samples=start_batch * self.local_batch)
        return webdataset_loader(dataset, self.num_workers)
