"""Group-balanced sampling: every value of a metadata column is drawn equally often.

A bias mitigation in training (course §3.9.3): when one group (a class, or a sensitive
attribute, or a combination such as colour x shape) dominates the data, a contrastive model
learns whatever feature separates the frequent groups, including spurious ones. Sampling
each training example with probability proportional to `1 / (G * n_g)` (n_g: the size of
its group g, G groups) makes every group equally likely in every batch in expectation; this is
the "subsample / reweight to balance groups" baseline that Idrissi et al. 2022 ("Simple data
balancing achieves competitive worst-group-accuracy") found hard to beat, and what PyTorch's
`WeightedRandomSampler` does with inverse-frequency weights.

Hand-written over `WeightedRandomSampler` because the trainer's sampler contract is stricter:
batches of `(index, sample_seed)` keys, one epoch's draws a pure function of (seed, epoch) so
that a run resumed mid-epoch replays the same batches (`ResumableBatchSampler`), and each
rank taking its share of the global batch. Draws are with replacement (minority samples
repeat; each draw gets its own sample seed, so a repeated image gets a fresh crop and caption).

    vlkit train data.source=folder data.root=DIR data.annotations=DIR/train.csv \
        data.balance_by=group out_dir=runs/balanced

`vlkit.training.balanced_data` reads the groups from the data and hands this sampler to the
trainer; the run writes `balance.json` (groups, counts, weights) next to its config.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from vlkit.training.sampler import ResumableBatchSampler, sample_seed

__all__ = ["BalancedBatchSampler", "inverse_frequency_weights"]


def inverse_frequency_weights(labels: Sequence[str]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Per-sample weights `1 / (G * n_g)`, which sum to 1 and give every group mass 1 / G.

    Args:
        labels: The group of each sample.

    Returns:
        `(weights (N,) float64, summary)`, summary `{"groups": {group: {"count", "weight"}}}`
        with the groups sorted by name (what `balance.json` records).

    Raises:
        ValueError: No labels.
    """
    if not labels:
        raise ValueError("no samples to balance")
    counts = Counter(labels)
    per_group = {group: 1.0 / (len(counts) * count) for group, count in counts.items()}
    weights = torch.tensor([per_group[label] for label in labels], dtype=torch.float64)
    groups = {g: {"count": counts[g], "weight": per_group[g]} for g in sorted(counts)}
    return weights, {"groups": groups}


class BalancedBatchSampler(ResumableBatchSampler):
    """`ResumableBatchSampler` whose epoch is `batches_per_epoch` batches drawn with
    replacement in proportion to `weights` (an epoch as long as an unweighted one).

    Args:
        weights: Non-negative per-sample weights (N,), e.g. `inverse_frequency_weights`.
        batch_size, seed, epoch, start_batch, rank, world_size: As `ResumableBatchSampler`.
    """

    def __init__(
        self,
        weights: torch.Tensor,
        batch_size: int,
        seed: int,
        epoch: int = 0,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(len(weights), batch_size, seed, epoch, start_batch, rank, world_size)
        self.weights = weights.to(torch.float64)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        # The whole epoch's draws come from (seed, epoch) alone, so starting at `start_batch`
        # replays exactly the batches an uninterrupted run would have seen.
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        draws = self.batches_per_epoch * self.batch_size
        order = torch.multinomial(self.weights, draws, replacement=True, generator=generator)
        order = order.tolist()
        for batch in range(self.start_batch, self.batches_per_epoch):
            start = batch * self.batch_size
            positions = range(start, start + self.batch_size)[self.rank :: self.world_size]
            # The sample seed follows the draw position: a sample drawn twice is augmented twice.
            yield [(order[p], sample_seed(self.seed, self.epoch, p)) for p in positions]
