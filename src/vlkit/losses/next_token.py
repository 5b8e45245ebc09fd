"""Next-token (causal language-modelling) cross-entropy, as transformers' causal LMs compute it.

The logits at position t predict the label at t + 1; labels equal to `IGNORE_INDEX` (-100, the
PyTorch / transformers convention) are not targets, and the loss is the mean over the remaining
target tokens. The generative VLMs' `forward(..., labels=...).loss` and the VLM training tasks
(`vlkit.training.vlm_task`) both call `next_token_loss`, so they give the same number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "next_token_loss"]

IGNORE_INDEX = -100


def next_token_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Mean cross-entropy of the logits at t against the labels at t + 1.

    Args:
        logits: (B, L, V); computed in float32 whatever their dtype (as transformers does).
        labels: (B, L) targets, `ignore_index` where not a target.
        ignore_index: The label value that is not a target.

    Returns:
        Scalar loss, the mean over the target tokens (NaN when there are none, as in PyTorch).
    """
    # Shift the labels, not the logits (transformers' `ForCausalLMLoss`): slicing (B, L, V)
    # logits copies them, and the slice's backward allocates a zero-filled (B, L, V) gradient;
    # padding the (B, L) labels with one ignored column costs nothing and gives the same mean.
    targets = F.pad(labels, (0, 1), value=ignore_index)[:, 1:]  # (B, L): label at t + 1
    flat = logits.reshape(-1, logits.shape[-1])  # (B*L, V), a view of contiguous logits
    return F.cross_entropy(
        flat.float(), targets.reshape(-1).to(flat.device), ignore_index=ignore_index
    )
