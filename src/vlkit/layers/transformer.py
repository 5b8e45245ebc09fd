"""Pre-LayerNorm transformer blocks (as in CLIP, SigLIP and ViT)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlkit.layers.attention import MultiheadSelfAttention
from vlkit.layers.mlp import Mlp


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): drop a residual branch per sample, rescale the rest."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - rate)
    return x * keep / (1.0 - rate)


class TransformerBlock(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)); with optional dropout on each residual branch,
    attention-probability dropout, and drop-path (stochastic depth)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: str,
        layer_norm_eps: float,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.attention = MultiheadSelfAttention(dim, num_heads, attention_dropout=attention_dropout)
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.mlp = Mlp(dim, mlp_dim, activation)
        self.dropout = nn.Dropout(dropout)
        self.drop_path_rate = drop_path_rate

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
        x = x + drop_path(self.dropout(attended), self.drop_path_rate, self.training)
        x = x + drop_path(self.dropout(self.mlp(self.norm2(x))), self.drop_path_rate, self.training)
        return x, attention

    def forward_prefix(self, x: torch.Tensor, queries: int) -> torch.Tensor:
        """`forward(x)[0][:, :queries]` (unmasked, eval mode) without computing the other rows:
        they read every token's keys and values but feed nothing after this block."""
        if self.training:
            raise RuntimeError("forward_prefix is an inference path; call eval() first")
        x = x[:, :queries] + self.attention.forward_prefix(self.norm1(x), queries)
        return x + self.mlp(self.norm2(x))


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
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        # Drop-path grows linearly with depth (Huang et al. 2016, Sec. 3; timm's ViT).
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            TransformerBlock(
                dim,
                num_heads,
                mlp_dim,
                activation,
                layer_norm_eps,
                dropout,
                attention_dropout,
                rate,
            )  # fmt: skip
            for rate in rates
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

    def forward_prefix(self, x: torch.Tensor, queries: int) -> torch.Tensor:
        """The first `queries` output tokens (B, queries, D) of unmasked `forward(x)` in eval mode:
        the last block computes those rows only (for a CLS-pooled ViT, 1 of 50-577 rows: about
        3/4 of that block's work saved). Equal to the full forward's rows up to float
        reassociation in the smaller matrix products."""
        if len(self.blocks) == 0:
            raise ValueError("forward_prefix needs at least one block")
        *blocks, last = self.blocks
        for block in blocks:
            x, _ = block(x)
        return last.forward_prefix(x, queries)
