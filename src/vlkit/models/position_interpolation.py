"""Learned ViT position embeddings resized to another patch grid (any-resolution towers).

A ViT learns one position embedding per patch of a `g x g` grid (Dosovitskiy et al. 2021,
Sec. 3.2, "Fine-tuning and higher resolution": "we perform 2D interpolation of the pre-trained
position embeddings, according to their location in the original image"). An image of another
size gives an `h x w` grid, so the `g x g` table is resized to `h x w` as an image with D channels.

The semantics are those of transformers' `interpolate_pos_encoding=True`
(models/clip/modeling_clip.py `CLIPVisionEmbeddings.interpolate_pos_encoding` and
models/siglip/modeling_siglip.py `SiglipVisionEmbeddings.interpolate_pos_encoding`, both adapted
from DINO / DINOv2): bicubic, `align_corners=False`, no antialiasing, the target given as a size
`(H // p, W // p)` (not a scale factor, so remainder pixels are ignored as the stride-p patch
convolution ignores them), the class token's embedding kept apart and unchanged, and the table
returned untouched when the grid already has the pretrained number of patches and the image is
square.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["interpolate_position_embedding", "patch_grid"]


def patch_grid(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """Patches per column and per row of a `height x width` image: `(H // p, W // p)`; the last
    `H % p` rows and `W % p` columns fall outside every patch (stride-p convolution)."""
    if height < patch_size or width < patch_size:
        raise ValueError(
            f"image of {height}x{width} pixels is smaller than one {patch_size}x{patch_size} patch"
        )
    return height // patch_size, width // patch_size


def interpolate_position_embedding(
    position_embedding: torch.Tensor,
    height: int,
    width: int,
    patch_size: int,
    class_token: bool,
) -> torch.Tensor:
    """The position table for a `height x width` image.

    Args:
        position_embedding: (P, D) the learned table: `g*g` patch rows, preceded by the class
            token's row when `class_token`.
        height: Image height in pixels.
        width: Image width in pixels.
        patch_size: Patch side p.
        class_token: Whether row 0 belongs to a class token (CLIP) or not (SigLIP).

    Returns:
        (cls + h*w, D) with `(h, w) = (height // p, width // p)`, row-major like the patch
        tokens; the class row (when present) first and unchanged.
    """
    extra = int(class_token)
    num_positions = position_embedding.shape[0] - extra
    side = int(num_positions**0.5)
    if side * side != num_positions:
        raise ValueError(f"{num_positions} patch positions do not form a square grid")
    new_height, new_width = patch_grid(height, width, patch_size)
    # transformers' shortcut: same patch count and a square image -> the table as it is.
    if new_height * new_width == num_positions and height == width:
        return position_embedding
    dim = position_embedding.shape[-1]
    class_rows, patch_rows = position_embedding[:extra], position_embedding[extra:]
    grid = patch_rows.reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, D, g, g)
    # Bicubic needs a floating type the CPU kernels support: half precision is resized in
    # float32 (transformers resizes in the table's dtype; identical for float32 tables).
    resized = F.interpolate(
        grid.float() if grid.dtype in (torch.float16, torch.bfloat16) else grid,
        size=(new_height, new_width),
        mode="bicubic",
        align_corners=False,
    ).to(grid.dtype)  # (1, D, h, w)
    resized = resized.permute(0, 2, 3, 1).reshape(new_height * new_width, dim)  # (h*w, D)
    return torch.cat([class_rows, resized], dim=0)
