"""Contrastive objectives over more than two views/modalities.

* `multimodal_infonce`: heterogeneous K-modality contrastive loss. For K modality
  embeddings of the same N samples, the symmetric InfoNCE of CLIP (Radford et al. 2021,
  Fig. 3) is summed over all K(K-1)/2 modality pairs (the "all pairs" extension used e.g. by
  CMC, Tian et al. 2020, "full graph" paradigm). For K = 2 it is exactly CLIP's loss.
* `comm_loss`: the CoMM objective (Dufumier et al. 2025, "What to align in multimodal
  contrastive learning?", ICLR, Sec. 3). A *fused* multimodal network f sees two
  label-preserving augmentations of all modalities, giving Z' = f(t'(X)) and
  Z'' = f(t''(X)), and, for every modality i, a view where all other modalities are masked
  out, Z_i = f(t_i(X)). The loss is

      L_CoMM = L_NCE(Z', Z'') + sum_i (L_NCE(Z_i, Z') + L_NCE(Z_i, Z'')) / 2,

  the first term capturing redundant, unique and synergistic information of the fused
  representation, the second aligning the fused representation with each unimodal one.
  `L_NCE` is the symmetric InfoNCE with temperature tau (the paper uses a single
  temperature, 0.1 by default); embeddings are L2-normalised here.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch
import torch.nn.functional as F

from vlkit.losses.contrastive import clip_loss

__all__ = ["comm_loss", "info_nce", "multimodal_infonce"]


def info_nce(
    a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1, normalize: bool = True
) -> torch.Tensor:
    """Symmetric InfoNCE between two views of the same N samples.

    Args:
        a: (N, D) embeddings; row i is a positive of `b[i]`.
        b: (N, D) embeddings.
        temperature: tau; logits are `a @ b.T / tau`.
        normalize: L2-normalise `a` and `b` first.

    Returns:
        Scalar `(CE(a b^T / tau, I) + CE(b a^T / tau, I)) / 2`.
    """
    if normalize:
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return clip_loss(a, b, 1.0 / temperature)  # CLIP's loss with a fixed temperature


def multimodal_infonce(
    embeddings: Sequence[torch.Tensor], temperature: float = 0.1, normalize: bool = True
) -> torch.Tensor:
    """Symmetric InfoNCE summed over all pairs of K >= 2 modalities.

    Args:
        embeddings: K tensors (N, D_k == D) of the same N samples.
        temperature: tau.
        normalize: L2-normalise each modality first.

    Returns:
        Scalar sum over pairs (k < l) of `info_nce(embeddings[k], embeddings[l])`.
    """
    if len(embeddings) < 2:
        raise ValueError("need at least two modalities")
    return sum(info_nce(a, b, temperature, normalize) for a, b in combinations(embeddings, 2))


def comm_loss(
    fused_view1: torch.Tensor,
    fused_view2: torch.Tensor,
    unimodal: Sequence[torch.Tensor],
    temperature: float = 0.1,
    normalize: bool = True,
) -> torch.Tensor:
    """CoMM loss (Dufumier et al. 2025, Sec. 3).

    Args:
        fused_view1: (N, D) Z', the fused representation of one augmentation of all modalities.
        fused_view2: (N, D) Z'', of a second augmentation.
        unimodal: n tensors (N, D), Z_i = fused network applied with only modality i kept.
        temperature: tau.
        normalize: L2-normalise embeddings.

    Returns:
        Scalar `L(Z', Z'') + sum_i (L(Z_i, Z') + L(Z_i, Z'')) / 2`.
    """
    loss = info_nce(fused_view1, fused_view2, temperature, normalize)
    for z in unimodal:
        loss = (
            loss
            + (
                info_nce(z, fused_view1, temperature, normalize)
                + info_nce(z, fused_view2, temperature, normalize)
            )
            / 2
        )
    return loss
