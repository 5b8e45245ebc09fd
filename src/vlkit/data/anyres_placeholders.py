"""How many `<image>` placeholders a LLaVA-NeXT "anyres" image fills, and where its padding is.

An image tiled by `vlkit.data.anyres_tiling.anyres_pixel_values` into a global view and a
`rows x cols` grid of S x S tiles becomes, after the tower (p px patches, S/p per side) and the
packing of `vlkit.models.anyres.pack_anyres_features`: the global view's `(S/p)^2` tokens, then
the stitched `(rows * S/p) x (cols * S/p)` grid with the rows or columns that only saw padding
cut off, each remaining row closed by a newline token. The processor needs the count before the
model runs, so it lives here (the data layer) and the model's packing reads the same bounds.
transformers: `LlavaNextProcessor._get_number_of_features` / `_get_unpadded_features`
(processing_llava_next.py) and `unpad_image` (modeling_llava_next.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from vlkit.data.anyres_tiling import select_best_resolution

__all__ = ["anyres_token_count", "unpadded_extent"]


def unpadded_extent(
    image_size: tuple[int, int], current: tuple[int, int]
) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) bounds of an image of `image_size` (H, W) inside the padded
    `current` (H, W) grid it was fitted into, centred."""
    original_height, original_width = image_size
    height, width = current
    if original_width / original_height > width / height:  # wide image: padding above/below
        new_height = int(round(original_height * (width / original_width), 7))
        padding = (height - new_height) // 2
        return padding, height - padding, 0, width
    new_width = int(round(original_width * (height / original_height), 7))
    padding = (width - new_width) // 2
    return 0, height, padding, width - padding


def anyres_token_count(
    image_size: tuple[int, int],
    pinpoints: Sequence[Sequence[int]],
    tile_size: int,
    patch_size: int,
    newline: bool = True,
) -> int:
    """Feature vectors (placeholders) for an image of `image_size` (H, W): the global view's
    `(S/p)^2` patches, the unpadded stitched grid, and one newline per stitched row."""
    best_height, best_width = select_best_resolution(image_size, pinpoints)
    side = tile_size // patch_size
    grid = (side * (best_height // tile_size), side * (best_width // tile_size))
    top, bottom, left, right = unpadded_extent(image_size, grid)
    rows, cols = bottom - top, right - left
    return side * side + rows * cols + (rows if newline else 0)
