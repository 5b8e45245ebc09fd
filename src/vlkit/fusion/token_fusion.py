"""TokenFusion: replace uninformative tokens with the other modality's projected tokens.

Wang et al. 2022, "Multimodal Token Fusion for Vision Transformers" (CVPR), Sec. 3 (homogeneous
modalities, e.g. RGB + depth on the same patch grid): a score predictor s^m (an MLP ending in
a sigmoid) rates every token of modality m; tokens whose score is below a threshold
theta (2e-2 in the paper) are substituted by the projected token of the other modality at the
same position:

    e^m_l = e^m_l * 1[s^m(e^m_l) >= theta] + Proj_{m' -> m}(e^{m'}_l) * 1[s^m(e^m_l) < theta].

The hard indicator has no gradient, so the paper trains the predictor through the product of
the token with its score together with an l1 sparsity loss on the scores; this module
returns the scores for that loss (`score_sparsity_loss`) and, with
`scale_by_score=True`, multiplies kept tokens by their score so the predictor receives a
gradient. Projections are linear maps here.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TokenFusion", "score_sparsity_loss"]


def score_sparsity_loss(*scores: torch.Tensor) -> torch.Tensor:
    """l1 sparsity on score maps: sum over modalities of the mean score.

    Args:
        *scores: (B, N) score maps in [0, 1].

    Returns:
        Scalar.
    """
    return sum(s.abs().mean() for s in scores)


class TokenFusion(nn.Module):
    """Token substitution between two aligned token sequences.

    Args:
        dim: Token size D (shared by both modalities).
        threshold: theta; tokens with score < theta are replaced.
        hidden: Hidden size of the score MLP (default max(D // 2, 1)).
        scale_by_score: Multiply kept tokens by their score (gives the predictor a gradient).
    """

    def __init__(
        self,
        dim: int,
        threshold: float = 2e-2,
        hidden: int | None = None,
        scale_by_score: bool = False,
    ):
        super().__init__()
        hidden = hidden or max(dim // 2, 1)
        self.threshold = threshold
        self.scale_by_score = scale_by_score
        self.score_a = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.score_b = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.proj_b_to_a = nn.Linear(dim, dim)
        self.proj_a_to_b = nn.Linear(dim, dim)

    def scores(self, x_a: torch.Tensor, x_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, D) x 2 -> (B, N) sigmoid scores for each modality."""
        return (
            torch.sigmoid(self.score_a(x_a)).squeeze(-1),
            torch.sigmoid(self.score_b(x_b)).squeeze(-1),
        )

    def forward(
        self, x_a: torch.Tensor, x_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fuse two aligned token sequences.

        Args:
            x_a: (B, N, D) tokens of modality a (e.g. RGB).
            x_b: (B, N, D) tokens of modality b (e.g. depth) on the same grid.

        Returns:
            `(out_a, out_b, score_a, score_b)`: fused (B, N, D) tokens and (B, N) scores.
        """
        if x_a.shape != x_b.shape:
            raise ValueError(f"modalities must be aligned, got {x_a.shape} and {x_b.shape}")
        s_a, s_b = self.scores(x_a, x_b)
        keep_a = (s_a >= self.threshold)[..., None]
        keep_b = (s_b >= self.threshold)[..., None]
        kept_a = x_a * s_a[..., None] if self.scale_by_score else x_a
        kept_b = x_b * s_b[..., None] if self.scale_by_score else x_b
        out_a = torch.where(keep_a, kept_a, self.proj_b_to_a(x_b))
        out_b = torch.where(keep_b, kept_b, self.proj_a_to_b(x_a))
        return out_a, out_b, s_a, s_b
