"""Early fusion: one decoder reads image patches and text as a single sequence, no vision encoder.

Chameleon Team 2024, "Chameleon: Mixed-Modal Early-Fusion Foundation Models", Sec. 2, with
continuous patches as in Fuyu-8B: each non-overlapping patch is embedded linearly
(`PatchEmbedding`) and fills one `<image>` placeholder, so the decoder is the only transformer.
"""

from __future__ import annotations

import torch
from torch import nn

from vlkit.models.splicing_vlm import SplicingVLM

__all__ = ["EarlyFusionVLM", "PatchEmbedding"]


class PatchEmbedding(nn.Module):
    """Early-fusion image tokenizer: non-overlapping patches -> one linear -> + learned position.

    Args:
        image_size: Input side S (square images).
        patch_size: Patch side p; S must be a multiple of p.
        dim: LM width D.
        channels: Image channels C.
    """

    def __init__(self, image_size: int, patch_size: int, dim: int, channels: int = 3) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch_size}")
        self.patch_size = patch_size
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Linear(channels * patch_size * patch_size, dim)
        self.position = nn.Parameter(torch.randn(self.num_patches, dim) * 0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) -> (N, (S/p)^2, D) patch embeddings in raster order."""
        n, c, height, width = images.shape
        p = self.patch_size
        patches = images.reshape(n, c, height // p, p, width // p, p)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(n, -1, c * p * p)  # (N, T, C*p*p)
        return self.proj(patches) + self.position  # (N, T, D)


class EarlyFusionVLM(SplicingVLM):
    """Pixels -> `PatchEmbedding` (the `vision` module, trainable) -> spliced -> `DecoderLM`.

    Args: as `SplicingVLM`, with a `PatchEmbedding` as `vision`, `nn.Identity()` as connector
    and `num_image_tokens` = the number of patches. Placeholder t is patch t.
    """
