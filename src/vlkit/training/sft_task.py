"""Supervised fine-tuning of generative (V)LMs: the `Trainer` task for SFT batches.

    task = SFTTask(micro_batch_size=2)
    Trainer(config, model, task, sft_dataset, collate_sft).fit()

The loss is the mean next-token cross-entropy over *all* supervised tokens of the global batch
(every assistant token of every row on every process), computed exactly whatever the micro-batch
split (`vlkit.training.lm_accumulation`) and the number of data-parallel processes:

1. the processes all-reduce their supervised-token counts into the global count N;
2. each process back-propagates (sum of its tokens' cross-entropy) * W / N, W processes;
3. the trainer averages the gradients over processes (divides their sum by W), which leaves
   the gradient of (sum over all tokens) / N, the global token mean.

A plain per-process mean averaged over processes would weight a token on a process with few
targets more than one on a process with many (the same bug as per-micro-batch means).

Under FSDP each forward and backward is collective, so the ranks also agree, before the first
forward, on how many micro-batches to run and where a rank without images must still run the
vision path (on a blank image, weighted 0: `fsdp_micro_batches`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vlkit.training.fsdp import is_sharded
from vlkit.training.fsdp_micro_batches import synchronized_micro_batches
from vlkit.training.lm_accumulation import accumulated_lm_backward, supervised_tokens

__all__ = ["SFTTask"]


def _world(group: Any) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class SFTTask:
    """Next-token loss on SFT batches, token-weighted across micro-batches and processes.

    The batch (`vlkit.data.datasets.sft.collate_sft`): `input_ids`, `attention_mask`, `labels`
    (B, L), `pixel_values` (B, images, C, H, W) (absent for text-only data), optional
    `pixel_attention_mask`; or images concatenated across rows (`pixel_values` (images, ...),
    LLaVA-NeXT's `image_sizes` (images, 2)) with `images_per_row` (B,), each micro-batch taking
    its rows' images (`lm_accumulation`). The model is called with the keys its forward names.

    Args:
        micro_batch_size: Rows per forward/backward (None: the process's whole batch at once);
            the gradient does not depend on it.
        process_group: The data-parallel group (None: the default group when torch.distributed
            is initialised, else a single process).

    Returns from `training_step`: {"loss": the global batch's token-mean loss (the same number
    on every process), "supervised_tokens": N}.
    """

    # A single row is a complete SFT example (the trainer skips smaller batches).
    min_rows = 1

    def __init__(self, micro_batch_size: int | None = None, process_group: Any = None) -> None:
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        self.micro_batch_size = micro_batch_size
        self.process_group = process_group

    def training_step(
        self,
        model: nn.Module,
        batch: dict[str, Any],
        backward: Callable[[torch.Tensor], None],
    ) -> dict[str, torch.Tensor]:
        """Forward and backward in micro-batches; returns {"loss", "supervised_tokens"}."""
        world = _world(self.process_group)
        labels = batch["labels"]
        count = torch.tensor(supervised_tokens(labels), dtype=torch.int64, device=labels.device)
        if world > 1:
            dist.all_reduce(count, group=self.process_group)
        total = float(count)
        # FSDP ranks must issue the same collectives whatever their rows (images or not, how
        # many micro-batches); DDP reduces after the backward (`_fill_missing_gradients`).
        synchronize = None
        if world > 1 and is_sharded(model):
            group = self.process_group
            synchronize = partial(synchronized_micro_batches, model, group=group)
        # Rank loss = local sum * W / N: the trainer's average over W ranks gives sum / N.
        loss = accumulated_lm_backward(
            model, batch, self.micro_batch_size, backward, num_tokens=total / world,
            synchronize=synchronize,
        )  # fmt: skip
        if world > 1:
            _fill_missing_gradients(model, self.process_group)
            loss = loss.detach().clone()
            dist.all_reduce(loss, group=self.process_group)
            loss /= world  # mean of (local sum * W / N) = global sum / N
        return {"loss": loss, "supervised_tokens": count}


def _fill_missing_gradients(model: nn.Module, group: Any) -> None:
    """Zero gradients where this process has none but another has one.

    The trainer all-reduces the flattened gradients of the parameters that have one; a rank
    whose rows never reached a parameter (a text-only batch that skips the vision tower) would
    flatten a different list and the collective would mix up tensors. A parameter no rank
    touched keeps `grad=None`, as in a single process on the global batch.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX, group=group)
    for param, anywhere in zip(params, has.tolist(), strict=True):
        if anywhere and param.grad is None:
            param.grad = torch.zeros_like(param)
