"""Qwen-VL position-aware vision-language adapter (Bai et al. 2023, "Qwen-VL", Sec. 2.1).

A single-layer cross-attention module compresses the ViT feature grid to a fixed number of
learned queries (256 in Qwen-VL). 2D absolute sin-cos positional encodings are added to the
queries and to the keys (not the values) to retain positional information; for an input
grid of a different size the key position table is bicubically interpolated (as
``get_abs_pos`` in Qwen-VL's ``visual.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlkit.fusion.cross_attention import CrossModalAttention


def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """1-D sin-cos embedding (MAE convention).

    Args:
        dim: Even output width.
        pos: (P,) positions.

    Returns:
        (P, dim) embeddings ``[sin(pos * w), cos(pos * w)]``.
    """
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    out = pos.double()[:, None] * omega[None]  # (P, dim/2)
    return torch.cat([out.sin(), out.cos()], dim=1).float()  # (P, dim)


def sincos_2d(dim: int, height: int, width: int) -> Tensor:
    """2-D sin-cos embedding: half the channels encode the row, half the column.

    Args:
        dim: Width, divisible by 4.
        height: Grid rows.
        width: Grid columns.

    Returns:
        (height * width, dim) row-major position table.
    """
    if dim % 4 != 0:
        raise ValueError(f"dim={dim} must be divisible by 4")
    rows = torch.arange(height).repeat_interleave(width)  # (H*W,)
    cols = torch.arange(width).repeat(height)  # (H*W,)
    # Same layout as MAE's get_2d_sincos_pos_embed: first half from x (column), then y (row).
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)


class QwenResampler(nn.Module):
    """Qwen-VL resampler: (B, N, Dv) -> (B, K, D) for any (square or given) grid.

    Args:
        dim: Output width ``D``.
        num_queries: ``K``; must be a perfect square (256 = 16 x 16 in Qwen-VL).
        num_heads: Attention heads.
        media_dim: Vision width ``Dv``; a bias-free ``kv_proj`` is used if != ``dim``.
    """

    def __init__(
        self, dim: int, num_queries: int = 256, num_heads: int = 8, media_dim: int | None = None
    ) -> None:
        super().__init__()
        side = math.isqrt(num_queries)
        if side * side != num_queries:
            raise ValueError(f"num_queries={num_queries} must be a perfect square")
        self.grid_size = side
        self.register_buffer("pos_embed", sincos_2d(dim, side, side), persistent=False)
        self.query = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        media_dim = dim if media_dim is None else media_dim
        self.kv_proj = nn.Linear(media_dim, dim, bias=False) if media_dim != dim else nn.Identity()
        self.ln_q = nn.LayerNorm(dim)
        self.ln_kv = nn.LayerNorm(dim)
        self.attn = CrossModalAttention(dim, num_heads)

    def key_pos_embed(self, height: int, width: int) -> Tensor:
        """Position table (H*W, D) for the keys, bicubically resized from the query grid."""
        if (height, width) == (self.grid_size, self.grid_size):
            return self.pos_embed
        table = self.pos_embed.reshape(1, self.grid_size, self.grid_size, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(height, width), mode="bicubic", align_corners=False)
        return table.permute(0, 2, 3, 1).reshape(height * width, -1)  # (H*W, D)

    def forward(
        self,
        media_tokens: Tensor,
        grid_hw: tuple[int, int] | None = None,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Resample a grid of visual tokens.

        Args:
            media_tokens: (B, N, Dv) row-major grid of visual tokens.
            grid_hw: (H, W) of the grid; defaults to a square ``sqrt(N)`` grid.
            return_attention: Also return the queries' attention to the tokens
                (B, heads, K, N).

        Returns:
            (B, K, D) resampled tokens (and the attention probabilities).
        """
        b, n, _ = media_tokens.shape
        if grid_hw is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"{n} tokens is not a square grid; pass grid_hw")
            grid_hw = (side, side)
        if grid_hw[0] * grid_hw[1] != n:
            raise ValueError(f"grid_hw={grid_hw} does not match {n} tokens")
        kv = self.ln_kv(self.kv_proj(media_tokens))  # (B, N, D)
        q = self.ln_q(self.query) + self.pos_embed  # (K, D)
        q = q.unsqueeze(0).expand(b, -1, -1)  # (B, K, D)
        key_pos = self.key_pos_embed(*grid_hw).to(kv.dtype)  # (N, D)
        return self.attn(q, kv, key_pos_embed=key_pos, return_attention=return_attention)
