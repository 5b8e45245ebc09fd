"""LLaVA-NeXT "anyres" features: the tiles' patch grids joined back into one image, unpadded,
with a learned newline embedding closing each row (Liu et al. 2024, LLaVA-NeXT / LLaVA-1.6).

`vlkit.data.anyres_tiling.anyres_pixel_values` cuts an image into a global view and a
`rows x cols` grid of S x S tiles. The tower encodes every view into an `h x w` grid of patch
features (CLS dropped). Here the tiles' grids are stitched into one `(rows * h) x (cols * w)`
grid, the rows or columns that only saw the padding are cut off (`unpad_features`), an
`image_newline` vector is appended to every row so the LM can tell where rows end, and the global
view's tokens go first. The semantics are transformers' `LlavaNextModel.pack_image_features`,
`unpad_image` (models/llava_next/modeling_llava_next.py) and `LlavaNextProcessor.
_get_number_of_features` (processing_llava_next.py) for the placeholder count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from vlkit.data.anyres_placeholders import anyres_token_count, unpadded_extent
from vlkit.data.anyres_tiling import anyres_grid_shape

__all__ = ["AnyResolutionEncoder", "anyres_token_count", "pack_anyres_features", "unpad_features"]


def unpad_features(features: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(D, H, W) features of the padded tile canvas -> (D, h, w) over the image alone."""
    top, bottom, left, right = unpadded_extent(image_size, tuple(features.shape[1:]))
    return features[:, top:bottom, left:right]


def pack_anyres_features(
    view_features: torch.Tensor,
    image_size: tuple[int, int],
    pinpoints: Sequence[Sequence[int]],
    tile_size: int,
    image_newline: torch.Tensor | None = None,
) -> torch.Tensor:
    """One image's view features -> its packed (N, D) sequence.

    Args:
        view_features: (1 + rows * cols, h * w, D): the global view first, then the tiles row
            by row, each an `h x w` patch grid (square: h = w).
        image_size: The image's original (height, width).
        pinpoints: The pinpoints the tiles were cut with.
        tile_size: S, the tower's input size.
        image_newline: (D,) appended after every stitched row, or None.

    Returns:
        (N, D) with N = `anyres_token_count(image_size, pinpoints, S, S / h)`.
    """
    base, tiles = view_features[0], view_features[1:]  # (h*w, D), (K, h*w, D)
    if tiles.shape[0] == 0:  # a single view: transformers appends one newline
        return base if image_newline is None else torch.cat([base, image_newline[None]], dim=0)
    side = int(base.shape[0] ** 0.5)
    rows, cols = anyres_grid_shape(image_size, pinpoints, tile_size)
    if rows * cols != tiles.shape[0] or side * side != base.shape[0]:
        raise ValueError(
            f"{tiles.shape[0]} tiles of {base.shape[0]} tokens do not form the {rows}x{cols} "
            f"grid of square patch grids chosen for an image of {tuple(image_size)}"
        )
    dim = tiles.shape[-1]
    grid = tiles.reshape(rows, cols, side, side, dim)  # (rows, cols, h, w, D)
    grid = grid.permute(4, 0, 2, 1, 3).reshape(dim, rows * side, cols * side)  # (D, rows*h, cols*w)
    grid = unpad_features(grid, image_size)  # (D, H', W')
    if image_newline is not None:
        newline = image_newline[:, None, None].to(grid.dtype).expand(dim, grid.shape[1], 1)
        grid = torch.cat([grid, newline], dim=-1)  # (D, H', W' + 1)
    return torch.cat([base, grid.flatten(1).T], dim=0)  # (h*w + H'*(W'+1), D)


class AnyResolutionEncoder(nn.Module):
    """Views of one image -> its packed LM-width features (LLaVA-NeXT's image path).

    Args:
        vision: (V, 3, S, S) views -> (V, h*w, Dv) patch tokens (CLS dropped), e.g. a
            `vlkit.models.frozen_vision.VisionTokens` with `drop_first=True`.
        connector: (V, h*w, Dv) -> (V, h*w, D), e.g. a `LlavaProjector`.
        dim: D, the LM width (the newline embedding's size).
        pinpoints: The tiling's pinpoints; tile_size: S.
    """

    def __init__(
        self,
        vision: Callable[[torch.Tensor], torch.Tensor] | nn.Module,
        connector: nn.Module,
        dim: int,
        pinpoints: Sequence[Sequence[int]],
        tile_size: int,
    ) -> None:
        super().__init__()
        self.vision = vision
        self.connector = connector
        # LLaVA-NeXT initialises image_newline as randn(D) / sqrt(D) (llava_arch.py).
        self.image_newline = nn.Parameter(torch.randn(dim) / dim**0.5)
        self.pinpoints = [tuple(int(v) for v in p) for p in pinpoints]
        self.tile_size = int(tile_size)

    def forward(self, views: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """(1 + K, 3, S, S) views of an image of `image_size` (H, W) -> (N, D) features."""
        features = self.connector(self.vision(views))  # (1 + K, h*w, D)
        return pack_anyres_features(
            features, image_size, self.pinpoints, self.tile_size, self.image_newline
        )
