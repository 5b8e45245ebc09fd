"""Multi-head self-attention on top of `torch.nn.functional.scaled_dot_product_attention`.

SDPA dispatches to Flash / memory-efficient kernels where the device supports them. It does not
return the attention probabilities, so `return_attention=True` takes an explicit (slower) path that
computes softmax(QK^T / sqrt(d) + mask) itself, for visualisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiheadSelfAttention(nn.Module):
    """Self-attention with one fused input projection (one GEMM for Q, K and V).

    The fused weight is laid out as [W_q; W_k; W_v], the layout of `nn.MultiheadAttention`'s
    `in_proj_weight` (open_clip) and of Hugging Face's separate q/k/v projections concatenated.
    """

    def __init__(
        self, dim: int, num_heads: int, bias: bool = True, attention_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.attention_dropout = attention_dropout
        if dim % num_heads != 0:
            raise ValueError(f"width {dim} is not divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attends every token to every (unmasked) token.

        Args:
            x: Tokens (B, N, D).
            attn_mask: Additive float mask broadcastable to (B, H, N, N), or None.
            is_causal: Apply a causal mask (ignored when `attn_mask` is given; fold it in there).
            return_attention: Also return the attention probabilities (B, H, N, N).

        Returns:
            The attended tokens (B, N, D) and the attention probabilities or None.
        """
        batch, length, dim = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, Dh)
        if return_attention:
            scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # (B, H, N, N)
            if attn_mask is not None:
                scores = scores + attn_mask
            elif is_causal:
                future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
                scores = scores.masked_fill(future, float("-inf"))
            attention = scores.softmax(dim=-1)
            dropped = F.dropout(attention, self.attention_dropout, training=self.training)
            out = dropped @ v
        else:
            attention = None
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=attn_mask,
                dropout_p=self.attention_dropout if self.training else 0.0,
                is_causal=is_causal and attn_mask is None,
            )
        out = out.transpose(1, 2).reshape(batch, length, dim)  # (B, N, D)
        return self.out_proj(out), attention

    def forward_prefix(self, x: torch.Tensor, queries: int) -> torch.Tensor:
        """The attended first `queries` tokens (B, queries, D) of unmasked attention over all of
        `x`: keys and values from every token, queries and the output projection for the first
        ones only (what a CLS-pooled tower's last block needs; `Transformer.forward_prefix`)."""
        batch, length, dim = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, Dh)
        out = F.scaled_dot_product_attention(q[:, :, :queries], k, v)  # (B, H, queries, Dh)
        return self.out_proj(out.transpose(1, 2).reshape(batch, queries, dim))
