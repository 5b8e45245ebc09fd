"""Hard-negative-weighted InfoNCE (Robinson et al. 2021, "Contrastive Learning with Hard Negative
Samples", ICLR; the reference code is github.com/joshr17/HCL, `image/main.py`, `criterion`).

InfoNCE spends its gradient on negatives in proportion to exp(s) (the softmax); HCL samples
negatives from q_beta(x-) ∝ exp(beta * s(x, x-)) p(x-) instead, so the negatives most similar to
the anchor (the hard ones) count more. With importance weights over the N negatives of a row
(Sec. 3.2, Eq. 4 with the debiasing term tau+ = 0):

    w_j  = exp(beta * s_j) / mean_k exp(beta * s_k)               (mean of w over negatives = 1)
    Ng   = sum_j w_j exp(s_j)            = N * E_{q_beta}[exp(s)]
    loss = -log( exp(s+) / (exp(s+) + Ng) )

where s are the temperature-scaled logits (`logit_scale * cos`), as in the reference code
(`imp = (beta * neg.log()).exp()` with `neg = exp(cos / tau)`, so beta multiplies the scaled
logit; the weights are not detached there and are not here). beta = 0 gives w = 1 and plain
InfoNCE (the cross-entropy of `ClipLoss`). Here the two directions of an image-text batch are
averaged as in CLIP: the images' negatives are the other texts and the texts' the other images.

Computed in log space: log Ng = log N + logsumexp((beta + 1) s) - logsumexp(beta s), so large
logit scales (1 / 0.01) neither overflow nor underflow.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from vlkit.distributed import gather_with_grad
from vlkit.losses.pairwise import check_paired, pair_logits

__all__ = ["HardNegativeInfoNCE", "hard_negative_cross_entropy", "hard_negative_infonce"]


def hard_negative_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, beta: float
) -> torch.Tensor:
    """Mean over rows of HCL's loss: the positive against hardness-weighted negatives.

    Args:
        logits: (M, K) scaled similarities; every column but the label's is a negative.
        labels: (M,) the positive's column per row.
        beta: Hardness concentration (>= 0; 0: plain cross-entropy).

    Returns:
        The scalar loss.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    rows, columns = logits.shape
    if columns < 2:
        raise ValueError(f"hard-negative InfoNCE needs >= 2 candidates per row, got {columns}")
    positive = logits.gather(1, labels[:, None]).squeeze(1)  # (M,)
    is_positive = torch.zeros_like(logits, dtype=torch.bool)
    is_positive[torch.arange(rows, device=logits.device), labels] = True
    # (M, K) each, the positive masked out after scaling (0 * -inf would be NaN at beta = 0).
    weighted = ((beta + 1.0) * logits).masked_fill(is_positive, -math.inf)
    weights = (beta * logits).masked_fill(is_positive, -math.inf)
    log_ng = (
        math.log(columns - 1) + torch.logsumexp(weighted, dim=1) - torch.logsumexp(weights, dim=1)
    )
    return (torch.logaddexp(positive, log_ng) - positive).mean()


def hard_negative_infonce(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    beta: float,
    logit_bias: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Symmetric hard-negative InfoNCE over a batch of matching pairs (row i matches row i).

    Args:
        image_emb, text_emb: (N, D) L2-normalised embeddings.
        logit_scale: The multiplier exp(t) = 1 / tau.
        beta: Hardness concentration (0: `clip_loss`).
        logit_bias: Optional scalar added to every logit.
    """
    check_paired(image_emb, text_emb)
    logits = pair_logits(image_emb, text_emb, logit_scale, logit_bias)  # (N, N)
    labels = torch.arange(image_emb.shape[0], device=image_emb.device)
    loss_i = hard_negative_cross_entropy(logits, labels, beta)
    loss_t = hard_negative_cross_entropy(logits.T, labels, beta)
    return (loss_i + loss_t) / 2


class HardNegativeInfoNCE(nn.Module):
    """Module form of `hard_negative_infonce`, optionally across processes.

    Args:
        beta: Hardness concentration (>= 0; 0: CLIP's InfoNCE).
        distributed: Score each rank's rows against every rank's embeddings (gathered with
            autograd, targets offset by `rank * batch`), as `ClipLoss(distributed=True)`.
        group: Optional process group.
    """

    def __init__(
        self, beta: float, distributed: bool = False, group: dist.ProcessGroup | None = None
    ) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = beta
        self.distributed = distributed
        self.group = group

    def forward(
        self,
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        if not (
            self.distributed
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size(self.group) > 1
        ):
            return hard_negative_infonce(image_emb, text_emb, logit_scale, self.beta, logit_bias)
        check_paired(image_emb, text_emb)
        all_images = gather_with_grad(image_emb, self.group)
        all_texts = gather_with_grad(text_emb, self.group)
        batch = image_emb.shape[0]
        offset = dist.get_rank(self.group) * batch
        labels = torch.arange(offset, offset + batch, device=image_emb.device)
        logits_i2t = pair_logits(image_emb, all_texts, logit_scale, logit_bias)
        logits_t2i = pair_logits(text_emb, all_images, logit_scale, logit_bias)
        return (
            hard_negative_cross_entropy(logits_i2t, labels, self.beta)
            + hard_negative_cross_entropy(logits_t2i, labels, self.beta)
        ) / 2

    def extra_repr(self) -> str:
        return f"beta={self.beta}, distributed={self.distributed}"
