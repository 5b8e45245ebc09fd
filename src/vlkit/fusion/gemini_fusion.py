"""GeminiFusion: pixel-wise intra- + inter-modal attention with linear cost.

Jia et al. 2024, "GeminiFusion: Efficient Pixel-wise Multimodal Fusion for Vision
Transformer" (ICML), Sec. 3: instead of full cross-attention (quadratic in the number of
tokens N), each token of modality 1 at position i attends only to two keys: itself
(intra-modal) and the token of modality 2 at the *same* position i (inter-modal), so the
cost is O(N). Two additions keep the softmax from collapsing onto the self key (which
would always win, the query and key coming from the same token):

* a layer-adaptive learnable noise added to the self key, and
* a relation discriminator phi(x1_i, x2_i) in (0, 1) (here a linear map of the concatenated
  pair followed by a sigmoid, per head) scaling the inter-modal key.

For modality 1 (modality 2 is symmetric, with its own weights):

    q = W_q x1_i,  k_self = W_k x1_i + noise,  k_cross = phi(x1_i, x2_i) * W_k x2_i,
    a = softmax([q.k_self, q.k_cross] / sqrt(d_h)),  y1_i = x1_i + W_o (a_0 W_v x1_i + a_1 W_v x2_i).

This follows the paper's description; details such as the exact form of phi and the noise
initialisation are this implementation's choices (documented above).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GeminiFusion", "GeminiFusionAttention"]


class GeminiFusionAttention(nn.Module):
    """Per-position attention of one modality over {own token, other modality's token}.

    Args:
        dim: Token size D.
        num_heads: Heads (each attends over its own 2 keys).
        noise_std: Initial scale of the learnable self-key noise.
    """

    def __init__(self, dim: int, num_heads: int = 8, noise_std: float = 0.02):
        super().__init__()
        if dim % num_heads:
            raise ValueError("dim must be divisible by num_heads")
        self.num_heads = num_heads
        self.norm_self = nn.LayerNorm(dim)
        self.norm_other = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.relation = nn.Linear(2 * dim, num_heads)
        self.noise = nn.Parameter(torch.randn(dim) * noise_std)

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """Args: x, other (B, N, D) aligned tokens. Returns (B, N, D) fused x."""
        b, n, d = x.shape
        h = self.num_heads
        xs, xo = self.norm_self(x), self.norm_other(other)
        q = self.q(xs).view(b, n, h, -1)
        k_self = (self.k(xs) + self.noise).view(b, n, h, -1)
        phi = torch.sigmoid(self.relation(torch.cat([xs, xo], dim=-1)))  # (B, N, H)
        k_cross = self.k(xo).view(b, n, h, -1) * phi[..., None]
        v = torch.stack([self.v(xs).view(b, n, h, -1), self.v(xo).view(b, n, h, -1)], dim=3)
        scores = torch.stack([(q * k_self).sum(-1), (q * k_cross).sum(-1)], dim=-1)
        attn = (scores / q.shape[-1] ** 0.5).softmax(dim=-1)  # (B, N, H, 2)
        o = (attn[..., None] * v).sum(dim=3).reshape(b, n, d)
        return x + self.out(o)


class GeminiFusion(nn.Module):
    """Symmetric GeminiFusion module fusing two aligned modalities.

    Args:
        dim: Token size D.
        num_heads: Attention heads.
        noise_std: Initial scale of the learnable self-key noise.
    """

    def __init__(self, dim: int, num_heads: int = 8, noise_std: float = 0.02):
        super().__init__()
        self.fuse_a = GeminiFusionAttention(dim, num_heads, noise_std)
        self.fuse_b = GeminiFusionAttention(dim, num_heads, noise_std)

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: x_a, x_b (B, N, D) on the same grid. Returns fused (B, N, D) each."""
        if x_a.shape != x_b.shape:
            raise ValueError(f"modalities must be aligned, got {x_a.shape} and {x_b.shape}")
        return self.fuse_a(x_a, x_b), self.fuse_b(x_b, x_a)
