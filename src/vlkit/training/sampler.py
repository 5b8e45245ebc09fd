"""A batch sampler that knows where it is, so training resumes mid-epoch.

Each epoch is a permutation drawn from (seed, epoch). Every sample is yielded as a key
`(index, sample_seed)`: datasets take all of that sample's randomness (crop, caption choice) from
`sample_seed`, so a resumed run, or one with a different number of DataLoader workers, sees
exactly the same pixels and tokens. Under torch.distributed every global batch is split across
ranks (rank r takes positions r, r + W, ...), so all ranks together see the global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed unique to (run seed, epoch, sample index)."""
    return (seed * 0x9E3779B1 + epoch * 0x85EBCA77 + index * 0xC2B2AE3D) % (2**63 - 1)


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields batches of (index, sample_seed) for one epoch, starting at `start_batch`.

    Args:
        num_samples: Dataset size.
        batch_size: Global batch size (all ranks together); incomplete final batches are dropped
            so every step has the same size (contrastive losses depend on the batch).
        seed: Run seed.
        epoch: Which permutation.
        start_batch: Batches of this epoch already consumed (mid-epoch resume).
        rank, world_size: This process's share of each global batch.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        epoch: int = 0,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {world_size} processes")
        if num_samples < batch_size:
            raise ValueError(
                f"dataset has {num_samples} samples, fewer than one batch ({batch_size})"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.start_batch = start_batch
        self.rank = rank
        self.world_size = world_size

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        for batch in range(self.start_batch, self.batches_per_epoch):
            indices = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            mine = indices[self.rank :: self.world_size]
            yield [(i, sample_seed(self.seed, self.epoch, i)) for i in mine]
