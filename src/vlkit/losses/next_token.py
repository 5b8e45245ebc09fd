"""Next-token (causal language-modelling) cross-entropy, as transformers' causal LMs compute it.

The logits at position t predict the label at t + 1; labels equal to `IGNORE_INDEX` (-100, the
PyTorch / transformers convention) are not targets, and the loss is the mean over the remaining
target tokens. The generative VLMs' `forward(..., labels=...).loss` and the VLM training tasks
(`vlkit.training.vlm_task`) both call `next_token_loss`, so they give the same number.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "next_token_loss", "next_token_loss_from_hidden"]

IGNORE_INDEX = -100


def next_token_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    num_items_in_batch: float | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the logits at t against the labels at t + 1.

    Args:
        logits: (B, L, V); computed in float32 whatever their dtype (as transformers does).
        labels: (B, L) targets, `ignore_index` where not a target.
        ignore_index: The label value that is not a target.
        num_items_in_batch: Divide the summed cross-entropy by this instead of the number of
            targets (transformers' argument of the same name, for exact accumulation over
            micro-batches: N = the whole batch's targets).

    Returns:
        Scalar loss, the mean over the target tokens (NaN when there are none, as in PyTorch).
    """
    # Shift the labels, not the logits (transformers' `ForCausalLMLoss`): slicing (B, L, V)
    # logits copies them, and the slice's backward allocates a zero-filled (B, L, V) gradient;
    # padding the (B, L) labels with one ignored column costs nothing and gives the same mean.
    targets = F.pad(labels, (0, 1), value=ignore_index)[:, 1:]  # (B, L): label at t + 1
    flat = logits.reshape(-1, logits.shape[-1])  # (B*L, V), a view of contiguous logits
    if num_items_in_batch is None:
        return F.cross_entropy(
            flat.float(), targets.reshape(-1).to(flat.device), ignore_index=ignore_index
        )
    summed = F.cross_entropy(
        flat.float(), targets.reshape(-1).to(flat.device), ignore_index=ignore_index,
        reduction="sum",
    )  # fmt: skip
    return summed / num_items_in_batch


def next_token_loss_from_hidden(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    ignore_index: int = IGNORE_INDEX,
    num_items_in_batch: float | None = None,
) -> torch.Tensor:
    """`next_token_loss` of `head(hidden)`, with the head applied only where there is a target.

    The LM head is the largest matrix of a small LM (SmolVLM-256M: 576 x 49,152, more
    multiply-adds per token than six of its decoder layers), and fine-tuning data supervises only
    the answer tokens, so computing the (B, L, V) logits of every image and prompt position just
    to drop them is most of the head's forward and backward. The selected rows' logits are the
    same numbers, so the loss and the gradients are those of `next_token_loss(head(hidden))`.

    Args:
        hidden: (B, L, D) final hidden states (after the LM's last norm).
        labels: (B, L) targets, `ignore_index` where not a target.
        head: (n, D) -> (n, V) logits (the LM head, with its float32 upcast).
        ignore_index, num_items_in_batch: As `next_token_loss`.

    Returns:
        Scalar loss, as `next_token_loss` (NaN when there is no target and no
        `num_items_in_batch`).

    Raises:
        ValueError: `labels` is not (B, L) for (B, L, D) hidden states (the boolean selection
            below would fail with an IndexError that names neither).
    """
    if tuple(labels.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} for a (batch, length) of "
            f"{tuple(hidden.shape[:2])}: give one label per input token (-100: not a target)"
        )
    targets = F.pad(labels, (0, 1), value=ignore_index)[:, 1:].to(hidden.device)  # label at t+1
    chosen = targets != ignore_index  # (B, L)
    scores = head(hidden[chosen]).float()  # (n, V): the head on target positions only
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = F.cross_entropy(scores, targets[chosen], reduction=reduction)
    return loss if num_items_in_batch is None else loss / num_items_in_batch
