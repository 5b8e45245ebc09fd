"""Multihead attention pooling (MAP): a learned probe attends over all tokens.

SigLIP's image head (big_vision `MAPHead`; transformers `SiglipMultiheadAttentionPoolingHead`):
pooled = probe' + MLP(LN(probe')), where probe' = MHA(probe, tokens, tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.layers.mlp import Mlp


class AttentionPoolingHead(nn.Module):
    """Pools (B, N, D) tokens into (B, D) with one learned query."""

    def __init__(
        self, dim: int, num_heads: int, mlp_dim: int, activation: str, layer_norm_eps: float
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.probe = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)
        # Fused [W_q; W_k; W_v] as in nn.MultiheadAttention.in_proj_weight.
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.mlp = Mlp(dim, mlp_dim, activation)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, dim = tokens.shape
        head_dim = dim // self.num_heads
        w_q, w_kv = self.in_proj.weight.split([dim, 2 * dim])
        b_q, b_kv = self.in_proj.bias.split([dim, 2 * dim])
        q = F.linear(self.probe, w_q, b_q).expand(batch, -1, -1)  # (B, 1, D)
        k, v = F.linear(tokens, w_kv, b_kv).chunk(2, dim=-1)  # (B, N, D) each
        q = q.view(batch, 1, self.num_heads, head_dim).transpose(1, 2)
        k = k.view(batch, length, self.num_heads, head_dim).transpose(1, 2)
        v = v.view(batch, length, self.num_heads, head_dim).transpose(1, 2)
        pooled = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, 1, dim)
        pooled = self.out_proj(pooled)
        pooled = pooled + self.mlp(self.norm(pooled))
        return pooled[:, 0]  # (B, D)
