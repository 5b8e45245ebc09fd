"""Pre-LayerNorm transformer blocks (as in CLIP, SigLIP and ViT)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlkit.layers.attention import MultiheadSelfAttention
from vlkit.layers.mlp import Mlp


class TransformerBlock(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(
        self, dim: int, num_heads: int, mlp_dim: int, activation: str, layer_norm_eps: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.attention = MultiheadSelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.mlp = Mlp(dim, mlp_dim, activation)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, attention = self.attention(
            self.norm1(x), attn_mask, is_causal=is_causal, return_attention=return_attention
        )
        x = x + attended
        x = x + self.mlp(self.norm2(x))
        return x, attention


class Transformer(nn.Module):
    """A stack of `TransformerBlock`s with optional per-block gradient checkpointing."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        activation: str,
        layer_norm_eps: float,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, mlp_dim, activation, layer_norm_eps)
            for _ in range(depth)
        )
        self.gradient_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        attentions = []
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and not return_attention:
                # Recompute activations in backward; use_reentrant=False also replays RNG state.
                x, _ = checkpoint(block, x, attn_mask, is_causal, use_reentrant=False)
            else:
                x, attention = block(x, attn_mask, is_causal, return_attention)
                if return_attention:
                    attentions.append(attention)
        return x, tuple(attentions) if return_attention else None
