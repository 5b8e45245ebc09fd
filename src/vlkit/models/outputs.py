"""What the towers return (the contracts in ARCHITECTURE.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class VisionOutput:
    """tokens: (B, N, D) final token features; pooled: (B, D); attentions: one (B, H, N, N) per block."""

    tokens: torch.Tensor
    pooled: torch.Tensor
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class TextOutput:
    """tokens: (B, L, D) final token features; pooled: (B, D) the end-of-text feature."""

    tokens: torch.Tensor
    pooled: torch.Tensor
    attentions: tuple[torch.Tensor, ...] | None = None
