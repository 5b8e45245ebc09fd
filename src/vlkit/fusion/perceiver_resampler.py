"""Flamingo Perceiver Resampler (Alayrac et al. 2022, Sec. 2.1, Fig. 5; Appendix A.1.1).

Maps a variable number of visual features (any number of frames ``T`` and tokens per
frame ``N``) to a fixed number ``K`` of visual tokens. Learned time (frame) embeddings are
added to each frame, the frames are flattened to (T*N, D), and ``K`` learned latent queries
cross-attend to ``concat(media, latents)`` in each layer (the keys/values include the
latents, Fig. 5), followed by a feed-forward block, both residual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PerceiverAttention(nn.Module):
    """Latents attend to ``concat(media, latents)``.

    Args:
        dim: Width ``D``.
        num_heads: Attention heads.
        head_dim: Width per head.
    """

    def __init__(self, dim: int, num_heads: int = 8, head_dim: int = 64) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: Tensor, latents: Tensor, media_mask: Tensor | None = None) -> Tensor:
        """Cross-attend.

        Args:
            media: (B, S, D) flattened media tokens.
            latents: (B, K, D) latent queries.
            media_mask: Optional bool (B, S), True = valid media token.

        Returns:
            (B, K, D) attention output (not yet added to the residual).
        """
        b, k, _ = latents.shape
        media = self.norm_media(media)  # (B, S, D)
        latents = self.norm_latents(latents)  # (B, K, D)
        kv_in = torch.cat([media, latents], dim=1)  # (B, S+K, D)
        q = self.to_q(latents).view(b, k, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.to_kv(kv_in).view(b, -1, 2, self.num_heads, self.head_dim)
        key, value = kv.permute(2, 0, 3, 1, 4)  # each (B, H, S+K, hd)
        mask = None
        if media_mask is not None:
            latent_valid = media_mask.new_ones(b, k, dtype=torch.bool)
            mask = torch.cat([media_mask.bool(), latent_valid], dim=1)[:, None, None]
        out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask)  # (B, H, K, hd)
        return self.to_out(out.transpose(1, 2).reshape(b, k, -1))  # (B, K, D)


class PerceiverResampler(nn.Module):
    """Perceiver Resampler: (B, T, N, D) or (B, N, D) -> (B, K, D).

    Args:
        dim: Visual feature width ``D``.
        depth: Number of (attention, FFW) layers.
        num_latents: Number of output tokens ``K`` (64 in Flamingo).
        num_heads: Attention heads.
        head_dim: Width per head.
        max_num_frames: Size of the learned time-embedding table.
        ff_mult: FFW expansion factor.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 6,
        num_latents: int = 64,
        num_heads: int = 8,
        head_dim: int = 64,
        max_num_frames: int = 8,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.time_embeddings = nn.Parameter(torch.randn(max_num_frames, dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(dim, num_heads, head_dim),
                    nn.Sequential(
                        nn.LayerNorm(dim),
                        nn.Linear(dim, dim * ff_mult, bias=False),
                        nn.GELU(),
                        nn.Linear(dim * ff_mult, dim, bias=False),
                    ),
                ]
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, media_tokens: Tensor, media_mask: Tensor | None = None) -> Tensor:
        """Resample.

        Args:
            media_tokens: (B, T, N, D) frames of visual features, or (B, N, D) (T = 1).
            media_mask: Optional bool (B, T, N) / (B, N) padding mask, True = valid.

        Returns:
            (B, K, D) resampled visual tokens.
        """
        if media_tokens.dim() == 3:
            media_tokens = media_tokens[:, None]  # (B, 1, N, D)
            if media_mask is not None and media_mask.dim() == 2:
                media_mask = media_mask[:, None]  # (B, 1, N)
        b, t, _, _ = media_tokens.shape
        if t > self.time_embeddings.shape[0]:
            raise ValueError(
                f"got {t} frames but only {self.time_embeddings.shape[0]} time embeddings"
            )
        x = media_tokens + self.time_embeddings[:t, None]  # (B, T, N, D)
        x = x.flatten(1, 2)  # (B, T*N, D)
        if media_mask is not None:
            media_mask = media_mask.flatten(1, 2)  # (B, T*N)
        latents = self.latents.expand(b, -1, -1)  # (B, K, D)
        for attn, ffw in self.layers:
            latents = latents + attn(x, latents, media_mask)  # (B, K, D)
            latents = latents + ffw(latents)  # (B, K, D)
        return self.norm(latents)  # (B, K, D)
