"""A checkpoint's preprocessing at another input resolution (any-resolution towers).

ViT towers run at other sizes with interpolated position embeddings
(`vlkit.models.position_interpolation`); the images must then be prepared the checkpoint's way
with only the output size changed. Qwen-VL does this between its stages (Bai et al. 2023,
Sec. 3.2: the visual encoder's input goes from 224 x 224 to 448 x 448).
"""

from __future__ import annotations

import dataclasses

from vlkit.data.preprocess_config import PreprocessConfig, as_height_width

__all__ = ["preprocess_at_size"]


def preprocess_at_size(
    preprocess: PreprocessConfig, image_size: int | tuple[int, int]
) -> PreprocessConfig:
    """`preprocess` producing `image_size` inputs (an int: a square; or `(height, width)`): the
    same steps, every size scaled.

    An explicit `resize_size` (e.g. CLIP's shortest edge 256 before a 224 crop) is scaled by the
    same factor as the output, so the crop keeps the same share of the image. A shortest edge
    going to a non-square output is scaled by the larger of the two factors: the crop must fit
    inside the resized image on both sides (with the smaller one, a 448 x 224 crop of a square
    image resized to 256 would be zero-padded top and bottom).
    """
    old_h, old_w = preprocess.output_size
    new_h, new_w = as_height_width(image_size)
    resize = preprocess.resize_size
    if isinstance(resize, int):  # a shortest edge (or a square): the larger factor, see above
        resize = round(resize * max(new_h / old_h, new_w / old_w))
    elif resize is not None:
        resize = (round(resize[0] * new_h / old_h), round(resize[1] * new_w / old_w))
    return dataclasses.replace(preprocess, image_size=image_size, resize_size=resize)
