"""LLaVA-NeXT "anyres" tiling: an image of any size as a global view plus a grid of tiles.

LLaVA-NeXT (Liu et al. 2024, "LLaVA-NeXT: Improved reasoning, OCR, and world knowledge";
LLaVA-1.6 "AnyRes"): among a list of grid resolutions ("pinpoints", multiples of the tower's
input size S), pick the one that keeps the most of the image's pixels and wastes the least
(`select_best_resolution`), resize the image into it keeping its aspect ratio, pad it centred,
cut it into S x S tiles, and put a S x S resize of the whole image in front. The tower encodes
each of the 1 + rows * cols views at its own resolution.

The steps and their rounding are transformers' (image_processing_utils.py
`select_best_resolution` / `get_patch_output_size`, models/llava_next/
image_processing_llava_next.py `LlavaNextImageProcessor`, the torchvision backend), so
`anyres_pixel_values` equals that processor's `pixel_values` for one image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from vlkit.data.images import to_rgb
from vlkit.data.preprocess_config import PreprocessConfig
from vlkit.data.preprocess_pipelines import resize_tensor
from vlkit.data.transformers_pipelines import transformers_pixels

__all__ = [
    "LLAVA_NEXT_PINPOINTS",
    "anyres_grid_shape",
    "anyres_pixel_values",
    "fit_inside",
    "select_best_resolution",
]

# LLaVA-NeXT's pinpoints for a 336 px tower (llava-hf/llava-v1.6-* preprocessor configs):
# 1x2, 2x1, 2x2, 3x1 and 1x3 tiles, as (height, width).
LLAVA_NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


def select_best_resolution(
    image_size: tuple[int, int], pinpoints: Sequence[Sequence[int]]
) -> tuple[int, int]:
    """The pinpoint `(height, width)` that shows the most of an image of `image_size` (H, W).

    Effective resolution: the image's pixels after fitting it inside the pinpoint (never more
    than it has); ties go to the pinpoint wasting fewer pixels, then to the earlier one.
    """
    if not pinpoints:
        raise ValueError("pinpoints is empty: give at least one (height, width)")
    original_height, original_width = image_size
    best, best_effective, best_wasted = None, 0, math.inf
    for height, width in pinpoints:
        scale = min(width / original_width, height / original_height)
        down_width, down_height = int(original_width * scale), int(original_height * scale)
        effective = min(down_width * down_height, original_width * original_height)
        wasted = width * height - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (int(height), int(width)), effective, wasted
    if best is None:
        raise ValueError(f"no pinpoint in {list(pinpoints)} holds any pixel of {image_size}")
    return best


def anyres_grid_shape(
    image_size: tuple[int, int], pinpoints: Sequence[Sequence[int]], tile_size: int
) -> tuple[int, int]:
    """(rows, cols) of S x S tiles for an image of `image_size` (H, W)."""
    height, width = select_best_resolution(image_size, pinpoints)
    return height // tile_size, width // tile_size


def fit_inside(image_size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """`(height, width)` of the image resized to fit `target` with its aspect ratio: the
    constrained side equals the target's, the other is rounded up (transformers'
    `get_patch_output_size`)."""
    original_height, original_width = image_size
    target_height, target_width = target
    scale_w, scale_h = target_width / original_width, target_height / original_height
    if scale_w < scale_h:
        return min(math.ceil(original_height * scale_w), target_height), target_width
    return target_height, min(math.ceil(original_width * scale_h), target_width)


def _as_uint8_chw(image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(to_rgb(image))).permute(2, 0, 1).contiguous()
    tensor = torch.as_tensor(image)
    if tensor.ndim != 3 or tensor.dtype != torch.uint8:
        raise ValueError(
            f"expected a PIL image or a uint8 (3, H, W) / (H, W, 3) array, got "
            f"{tuple(tensor.shape)} {tensor.dtype}"
        )
    return tensor if tensor.shape[0] == 3 else tensor.permute(2, 0, 1).contiguous()


def anyres_pixel_values(
    image: Image.Image | np.ndarray | torch.Tensor,
    pinpoints: Sequence[Sequence[int]],
    preprocess: PreprocessConfig,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The global view and the tiles of one image, normalised for the tower.

    Args:
        image: RGB (a PIL image, or uint8 (3, H, W) / (H, W, 3)).
        pinpoints: Candidate `(height, width)` grids, multiples of the tile size.
        preprocess: The tower's preprocessing; its square `image_size` is the tile size S.

    Returns:
        ((1 + rows * cols, 3, S, S) float32 views: the whole image resized to S x S first, then
        the tiles row by row), and the image's original `(height, width)` (LLaVA-NeXT's
        `image_sizes`, which the feature packing needs to remove the padding).
    """
    tile_height, tile_width = preprocess.output_size
    if tile_height != tile_width:
        raise ValueError(f"anyres tiles are square: image_size {preprocess.image_size}")
    for pinpoint in pinpoints:
        if pinpoint[0] % tile_height or pinpoint[1] % tile_height:
            raise ValueError(f"pinpoint {tuple(pinpoint)}: not a multiple of the tile size, "
                             f"{tile_height}")  # fmt: skip
    pixels = _as_uint8_chw(image)  # (3, H, W) uint8
    size = (int(pixels.shape[1]), int(pixels.shape[2]))
    best = select_best_resolution(size, pinpoints)
    # Resize into the best grid keeping the aspect ratio, then pad with zeros, centred (the
    # extra pixel of an odd margin on the right / bottom).
    inner = fit_inside(size, best)
    resized = resize_tensor(pixels, inner, preprocess.interpolation)
    left, extra_x = divmod(best[1] - inner[1], 2)
    top, extra_y = divmod(best[0] - inner[0], 2)
    canvas = torch.nn.functional.pad(resized, (left, left + extra_x, top, top + extra_y))
    tile = tile_height
    tiles = [
        canvas[:, row : row + tile, col : col + tile]
        for row in range(0, best[0], tile)
        for col in range(0, best[1], tile)
    ]
    global_view = resize_tensor(pixels, (tile, tile), preprocess.interpolation)
    views = [transformers_pixels(view, preprocess) for view in [global_view, *tiles]]
    return torch.stack(views), size
