"""Run a CLIP-like model's ViT tower on images of another size than it was trained on.

The tower resizes its learned position embeddings to the new patch grid
(`interpolate_pos_encoding`, `vlkit.models.position_interpolation`); the preprocessing is the
checkpoint's own with only the output size changed. `vlkit zeroshot --image-size N` and
`vlkit embed --image-size N` go through `at_image_size`.
"""

from __future__ import annotations

from vlkit.data.preprocess_config import as_height_width
from vlkit.data.resolution import preprocess_at_size
from vlkit.data.transforms import ImageTransform, get_transform
from vlkit.models.clip import CLIP
from vlkit.models.vit import VisionTransformer

__all__ = ["at_image_size", "preprocess_at_size"]


def at_image_size(
    model: CLIP, image_size: int | tuple[int, int], what: str = "image_size"
) -> ImageTransform:
    """Switches `model` to interpolated position embeddings and returns the evaluation transform
    that makes `image_size` inputs (an int for a square, or `(height, width)`).

    Args:
        what: How the caller names `image_size` in messages (the CLI passes "--image-size").

    Raises:
        ValueError: The model's image tower is not a ViT, or `image_size` is smaller than one
            patch.
    """
    if not isinstance(model.vision, VisionTransformer):
        raise ValueError(
            f"{what}: only ViT image towers take other image sizes (interpolated position "
            f"embeddings); this model's is a {type(model.vision).__name__}"
        )
    patch = model.config.vision.patch_size
    height, width = as_height_width(image_size)
    if min(height, width) < patch:
        raise ValueError(f"{what} {image_size}: must be at least the patch size, {patch}")
    model.set_interpolate_pos_encoding(True)
    return get_transform(preprocess_at_size(model.config.preprocess, image_size), train=False)
