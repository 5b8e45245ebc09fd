"""Building blocks the image-text losses share: the shape check of a paired batch, the scaled
(and biased) similarity logits, and the symmetric cross-entropy of InfoNCE.

CLIP's loss (single-process and across ranks), SigLIP's pairwise sigmoid, the memory-bank
InfoNCE and BLIP-2's ITC differ only in which candidates they score against and how the logits
become a loss; the pieces here are the parts they have in common.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["check_paired", "pair_logits", "symmetric_cross_entropy"]


def check_paired(image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
    """Raises ValueError unless both are (N, D) tensors of one shape (row i matches row i)."""
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(
            f"expected two (N, D) tensors of one shape, got {tuple(image_emb.shape)} and "
            f"{tuple(text_emb.shape)}"
        )


def pair_logits(
    queries: torch.Tensor,
    keys: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """`logit_scale * queries @ keys.T (+ logit_bias)`: (M, D) x (K, D) -> (M, K) logits.

    Args:
        queries: (M, D) embeddings, one row per logit row.
        keys: (K, D) candidate embeddings, one per logit column.
        logit_scale: The multiplier exp(t), not its log.
        logit_bias: Optional scalar added to every logit (SigLIP's b).
    """
    logits = logit_scale * queries @ keys.T
    if logit_bias is not None:
        logits = logits + logit_bias
    return logits


def symmetric_cross_entropy(
    logits_per_image: torch.Tensor,
    logits_per_text: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """InfoNCE's `(CE(image->text) + CE(text->image)) / 2` with the same target per row."""
    loss_i = F.cross_entropy(logits_per_image, labels, label_smoothing=label_smoothing)
    loss_t = F.cross_entropy(logits_per_text, labels, label_smoothing=label_smoothing)
    return (loss_i + loss_t) / 2
