"""`SmolVLMImageProcessor`: transformers' SmolVLM / Idefics3 image-processor call on a batch.

`processor(images, return_tensors="pt", **kwargs)` as `SmolVLMImageProcessorPil.__call__`:
images are nested per sample (`make_nested_list_of_images`: one image -> `[[image]]`, a flat
list -> one sample), each is split or squashed (`image_processor.preprocess_image`) and the
batch is zero-padded to its most views and largest view, with `pixel_attention_mask`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from vlkit.data.smolvlm.image_processor import (
    IMAGE_KWARGS,
    SmolVLMImageConfig,
    pad_images,
    preprocess_image,
)

__all__ = ["SmolVLMImageProcessor", "is_image", "nest_images"]


def is_image(value: Any) -> bool:
    """A single image: PIL, or a 2-D / 3-D numpy array or torch tensor."""
    if isinstance(value, Image.Image):
        return True
    return isinstance(value, np.ndarray | torch.Tensor) and value.ndim in (2, 3)


def nest_images(images: Any) -> list[list[Any]]:
    """Per-sample image lists, as transformers' `make_nested_list_of_images`: one image is one
    sample of one, a flat list is one sample, a list of lists is kept; a 4-D array is one sample
    of its images.

    Raises:
        ValueError: Anything else (naming the type).
    """
    if is_image(images):
        return [[images]]
    if isinstance(images, np.ndarray | torch.Tensor) and images.ndim == 4:
        return [list(images)]
    if isinstance(images, list | tuple):
        if images and all(isinstance(sample, list | tuple) for sample in images):
            return [list(sample) for sample in images]
        if images and all(is_image(image) for image in images):
            return [list(images)]
    raise ValueError(
        f"images of type {type(images).__name__}: expected an image, a list of images or a "
        "list of lists of images (PIL, or uint8 numpy arrays / torch tensors)"
    )


class SmolVLMImageProcessor:
    """Callable image processor with transformers' per-call keyword arguments.

    Attributes:
        config: The checkpoint's image settings; per-call arguments override a copy.
    """

    def __init__(self, config: SmolVLMImageConfig) -> None:
        self.config = config

    def __call__(
        self,
        images: Any,
        return_tensors: str | None = "pt",
        return_row_col_info: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Preprocesses a batch.

        Args:
            images: An image, a list (one sample) or a list of lists (one per sample).
            return_tensors: Only "pt" (transformers' PIL backend would also give lists).
            return_row_col_info: Also return `rows` and `cols`, per sample and image (0 for an
                image that was not split).
            **kwargs: Settings under transformers' names (`IMAGE_KWARGS`: `size`,
                `max_image_size`, `do_image_splitting`, `do_pad`, ...).

        Returns:
            `pixel_values` `(B, N, 3, H, W)` float32 and `pixel_attention_mask` `(B, N, H, W)`
            int64 (only `pixel_values`, `(B, N, 3, tile, tile)`, when `do_pad=False`).

        Raises:
            TypeError: An unknown keyword argument.
            ValueError: Unsupported images, or `do_pad=False` with views of different sizes.
        """
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' is supported")
        unknown = sorted(set(kwargs) - set(IMAGE_KWARGS))
        if unknown:
            raise TypeError(f"unknown image processor keyword argument(s) {unknown}")
        config = self.config.with_overrides(**kwargs)
        batch, rows, cols = [], [], []
        for sample in nest_images(images):
            views: list[np.ndarray] = []
            sample_rows, sample_cols = [], []
            for image in sample:
                image_views, r, c = preprocess_image(image, config)
                views += image_views
                sample_rows.append(r)
                sample_cols.append(c)
            batch.append(views)
            rows.append(sample_rows)
            cols.append(sample_cols)
        if config.do_pad:
            pixel_values, pixel_mask = pad_images(batch)
            out: dict[str, Any] = {
                "pixel_values": pixel_values,
                "pixel_attention_mask": pixel_mask,
            }
        else:
            try:
                out = {"pixel_values": torch.from_numpy(np.array(batch, dtype=np.float32))}
            except ValueError as error:
                raise ValueError(
                    "do_pad=False needs the same number and size of views in every sample"
                ) from error
        if return_row_col_info:
            out["rows"], out["cols"] = rows, cols
        return out
