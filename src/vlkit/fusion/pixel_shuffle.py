"""Idefics3 / SmolVLM pixel-shuffle connector (Laurençon et al. 2024, "Building and better
understanding vision-language models", Sec. 2.2; Marafioti et al. 2025, SmolVLM, Sec. 2.1).

Pixel shuffle (space-to-depth) trades spatial resolution for channels: a square grid of
``N`` visual tokens of width ``Dv`` becomes ``N / s^2`` tokens of width ``Dv * s^2``, which
a bias-free Linear (``modality_projection``) maps to the LM width. The channel order follows
transformers' ``Idefics3Connector.pixel_shuffle`` exactly: channels are ordered
``(row offset, column offset, original channel)`` with the original channel fastest, which
differs from ``F.pixel_unshuffle``'s ``(channel, row offset, column offset)`` order.
"""

from __future__ import annotations

from torch import Tensor, nn


def pixel_shuffle(x: Tensor, scale_factor: int = 2) -> Tensor:
    """Idefics3 pixel shuffle.

    Args:
        x: (B, N, Dv) tokens of a square ``sqrt(N) x sqrt(N)`` grid, row-major.
        scale_factor: ``s``; must divide the grid side.

    Returns:
        (B, N / s^2, Dv * s^2) tokens; token ``(i, j)`` of the coarse grid holds channels
        ``x[(s*i + a) * side + s*j + c_off]`` at channel index ``(a * s + c_off) * Dv + d``.
    """
    bsz, seq, dim = x.shape
    side = int(round(seq**0.5))
    if side * side != seq or side % scale_factor != 0:
        raise ValueError(f"need a square grid divisible by {scale_factor}, got {seq} tokens")
    s = scale_factor
    x = x.reshape(bsz, side, side // s, dim * s)  # (B, H, W/s, s*Dv)
    x = x.permute(0, 2, 1, 3)  # (B, W/s, H, s*Dv)
    x = x.reshape(bsz, side // s, side // s, dim * s * s)  # (B, W/s, H/s, s*s*Dv)
    x = x.permute(0, 2, 1, 3)  # (B, H/s, W/s, s*s*Dv)
    return x.reshape(bsz, seq // (s * s), dim * s * s)  # (B, N/s^2, s^2*Dv)


class _SimpleMLP(nn.Module):
    """Bias-free projection, named like transformers' ``Idefics3SimpleMLP``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class PixelShuffleConnector(nn.Module):
    """Connector (B, N, Dv) -> (B, N / s^2, D); state-dict compatible with transformers.

    Args:
        vision_dim: Vision width ``Dv``.
        text_dim: LM width ``D``.
        scale_factor: Pixel-shuffle factor ``s`` (2 for Idefics3, 4 for SmolVLM-256M).
    """

    def __init__(self, vision_dim: int, text_dim: int, scale_factor: int = 2) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        self.modality_projection = _SimpleMLP(vision_dim * scale_factor**2, text_dim)

    def forward(self, media_tokens: Tensor) -> Tensor:
        """Shuffle then project: (B, N, Dv) -> (B, N / s^2, D)."""
        x = pixel_shuffle(media_tokens, self.scale_factor)  # (B, N/s^2, s^2*Dv)
        return self.modality_projection(x)  # (B, N/s^2, D)
