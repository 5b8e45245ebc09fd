"""Image preprocessing: an image -> the normalized float32 tensor a model expects.

`ImageTransform` applies a `PreprocessConfig`. Its `pipeline` field, set from the checkpoint's
origin, picks whose preprocessing is reproduced (`vlkit.data.preprocess_pipelines`, `vlkit.data.transformers_pipelines`):

- "open_clip" (open_clip checkpoints and vlkit's own): open_clip's
  `image_transform(size, is_train=False)` (open_clip/transform.py): `Resize` (shortest side) +
  `CenterCrop`, `Resize((h, w))` for `resize_mode="squash"`, or `ResizeKeepRatio(longest=1)` +
  `CenterCropOrPad(fill=fill_color)` for `"longest"`, all on the PIL image in its own mode;
  then `convert("RGB")`, `ToTensor`, `Normalize`. Bit-identical.
- "transformers" (Hugging Face checkpoints): transformers' default `CLIPImageProcessor` /
  `SiglipImageProcessor` and what `AutoImageProcessor` returns with torchvision installed
  (the `TorchvisionBackend`; `use_fast` is a deprecated alias of `backend=` in transformers 5):
  convert to RGB first (transparency onto white), resize the uint8 tensor with
  `interpolate(antialias=True)`, floored center crop, fused rescale + normalize. Bit-identical.
- "transformers_pil": `CLIPImageProcessorPil` / `SiglipImageProcessorPil` (`backend="pil"`).
  Identical up to float32 rounding.

Inputs: PIL images of any mode, numpy arrays (HWC or CHW, uint8 or float) and torch tensors
(CHW or HWC), as transformers' processors accept them. The open_clip pipeline works on PIL
images and float CHW tensors, as open_clip's does; a uint8 array or tensor is made the PIL
image it encodes, a float numpy array the equivalent tensor (open_clip refuses both).

Train mode is open_clip's default training transform: `RandomResizedCrop(size, scale=(0.9, 1.0),
interpolation=BICUBIC)` in the image's own mode, `convert("RGB")`, `ToTensor`, `Normalize`,
with the crop sampled exactly as torchvision's `RandomResizedCrop.get_params` does (torchvision
is not a runtime dependency of vlkit).

Hugging Face `preprocessor_config.json` files are a checkpoint format: `vlkit.hub.hf_preprocess`
converts them to and from `PreprocessConfig`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from vlkit.data.images import load_image, scale_to_8bit
from vlkit.data.preprocess_config import PreprocessConfig
from vlkit.data.preprocess_pipelines import (
    open_clip_geometry,
    open_clip_pixels,
    open_clip_tensor_pixels,
    pil_rgb_to_tensor,
)
from vlkit.data.transformers_pipelines import transformers_pil_pixels, transformers_pixels

__all__ = [
    "ImageInput",
    "ImageTransform",
    "get_transform",
    "random_resized_crop_params",
    "to_batch",
]

# What a transform accepts, as transformers' image processors do.
ImageInput = Image.Image | np.ndarray | torch.Tensor
_PIPELINES = {
    "open_clip": open_clip_pixels,
    "transformers": transformers_pixels,
    "transformers_pil": transformers_pil_pixels,
}


def random_resized_crop_params(
    width: int,
    height: int,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """Samples a random crop box the way torchvision's `RandomResizedCrop.get_params` does.

    Same algorithm, same random draws in the same order (torchvision/transforms/transforms.py,
    `RandomResizedCrop.get_params`): up to 10 attempts of an area fraction uniform in `scale` and
    a log-uniform aspect ratio in `ratio`; the first box that fits is placed uniformly at
    random; if none fits, a center crop clamped to `ratio` (or the whole image) is used. With
    `generator=None` the global torch RNG is used, so after `torch.manual_seed(s)` this returns
    what torchvision returns after the same seed.

    Args:
        width: Image width.
        height: Image height.
        scale: Range of the crop's area as a fraction of the image area.
        ratio: Range of the crop's width / height.
        generator: Optional torch RNG to draw from.

    Returns:
        `(top, left, crop_height, crop_width)`.
    """
    area = height * width
    # float32 like torchvision: the bounds of the log-uniform draw are float32 logs.
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        log_aspect = torch.empty(1).uniform_(
            float(log_ratio[0]), float(log_ratio[1]), generator=generator
        )
        aspect_ratio = torch.exp(log_aspect).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    # Fallback to a central crop.
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


class ImageTransform:
    """Turns an image into the normalized `(3, H, W)` float32 tensor a model expects.

    Eval mode (`train=False`) reproduces the reference named by `config.pipeline` (see the
    module docstring). Train mode (`train=True`): open_clip's default
    `RandomResizedCrop(image_size, scale=(0.9, 1.0), interpolation=BICUBIC)` (bicubic
    regardless of `config.interpolation`, as open_clip hard-codes it) on the image in its own
    mode, then `convert("RGB")`, scaling and normalization.

    Args:
        config: The preprocessing to apply.
        train: Use the random training crop instead of the deterministic eval resize.
        scale: Train mode: range of the crop area as a fraction of the image area.
        ratio: Train mode: range of the crop aspect ratio (width / height).
        generator: Train mode: default torch RNG for the crop; None uses the global RNG.
    """

    def __init__(
        self,
        config: PreprocessConfig,
        train: bool = False,
        *,
        scale: tuple[float, float] = (0.9, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        generator: torch.Generator | None = None,
    ) -> None:
        self.config = config
        self.train = train
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.generator = generator

    @property
    def image_size(self) -> int | tuple[int, int]:
        """The output size: an int for a square, else `(height, width)` (`config.image_size`)."""
        return self.config.image_size

    @property
    def output_size(self) -> tuple[int, int]:
        """`(height, width)` of the output (with `center_crop=False` it follows the input)."""
        return self.config.output_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r}, train={self.train})"

    def resize_and_crop(
        self, image: ImageInput, generator: torch.Generator | None = None
    ) -> Image.Image:
        """The geometric part of the transform, as an RGB PIL image (for display).

        Geometry follows the open_clip pipeline (in the source mode, then `convert("RGB")`).

        Args:
            image: Input image.
            generator: Train mode: torch RNG for this call (default: the one given at
                construction, else the global RNG).
        """
        image = _as_pil(image)
        if self.config.rescale_high_bit_depth:
            image = scale_to_8bit(image)
        if self.train:
            height, width = self.config.output_size
            top, left, h, w = random_resized_crop_params(
                image.width, image.height, self.scale, self.ratio, generator or self.generator
            )
            # Crop first, then resize, as torchvision's `resized_crop` on PIL does; resizing
            # with `box=` instead would let the filter read pixels outside the crop.
            crop = image.crop((left, top, left + w, top + h))
            return crop.resize((width, height), Image.Resampling.BICUBIC).convert("RGB")
        return open_clip_geometry(image, self.config).convert("RGB")

    def __call__(self, image: ImageInput, generator: torch.Generator | None = None) -> torch.Tensor:
        """Transforms one image.

        Args:
            image: A PIL image (any mode), a numpy array (HWC or CHW; uint8 or float) or a
                torch tensor (CHW or HWC).
            generator: Train mode: torch RNG for this call (see `resize_and_crop`).

        Returns:
            A float32 tensor of shape `(3, height, width)`.
        """
        if self.train:
            return pil_rgb_to_tensor(self.resize_and_crop(image, generator), self.config)
        if self.config.pipeline == "open_clip":
            if _is_float_array(image):
                return open_clip_tensor_pixels(image, self.config)
            image = _as_pil(image)
        elif not isinstance(image, (Image.Image, np.ndarray, torch.Tensor)):
            raise TypeError(_type_message(image))
        return _PIPELINES[self.config.pipeline](image, self.config)

    def to_batch(
        self,
        images: Sequence[ImageInput | str | os.PathLike[str]],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Transforms several images into one batch.

        Args:
            images: Images, or paths loaded with `vlkit.data.images.load_image` (in their
                own mode, so the transform converts them as the reference does).
            generator: Train mode: torch RNG for the crops.

        Returns:
            A float32 tensor of shape `(len(images), 3, height, width)`.
        """
        if len(images) == 0:
            raise ValueError("to_batch needs at least one image")
        loaded = [
            load_image(im, keep_mode=True) if isinstance(im, (str, os.PathLike)) else im
            for im in images
        ]
        return torch.stack([self(im, generator) for im in loaded])


def _type_message(image: object) -> str:
    return (
        f"expected a PIL.Image.Image, a numpy array or a torch tensor, got {type(image).__name__}"
    )


def _is_float_array(image: object) -> bool:
    if isinstance(image, torch.Tensor):
        return image.is_floating_point()
    return isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.floating)


def _as_pil(image: ImageInput) -> Image.Image:
    # open_clip's eval transform takes PIL images (torchvision v1 `Resize` refuses numpy
    # arrays, and `Normalize` refuses a uint8 tensor); an 8-bit array or tensor is turned
    # into the PIL image it encodes.
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        image = image.numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(_type_message(image))
    if image.dtype != np.uint8:
        raise TypeError(
            f"this transform takes uint8 arrays (open_clip works on PIL images), got {image.dtype}"
        )
    if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return Image.fromarray(np.ascontiguousarray(image))


def to_batch(
    images: Sequence[ImageInput | str | os.PathLike[str]],
    transform: ImageTransform | PreprocessConfig,
) -> torch.Tensor:
    """Transforms several images into a `(B, 3, H, W)` float32 batch.

    Args:
        images: Images (PIL, numpy, torch), or paths loaded with `vlkit.data.images.load_image`.
        transform: The transform, or a config for an eval-mode one.
    """
    if isinstance(transform, PreprocessConfig):
        transform = ImageTransform(transform)
    return transform.to_batch(images)


def get_transform(config: PreprocessConfig, train: bool = False) -> ImageTransform:
    """Builds the image transform for a config.

    A checkpoint directory's `preprocessor_config.json` is a Hugging Face format: read it with
    `vlkit.hub.hf_preprocess.preprocess_config_from_hf`, or call `vlkit.get_transform`, which
    takes presets, checkpoints and models.

    Args:
        config: The preprocessing to apply.
        train: Random training crop instead of the eval resize (see `ImageTransform`).

    Returns:
        The transform.

    Raises:
        TypeError: `config` is not a `PreprocessConfig` (e.g. a path).
    """
    if not isinstance(config, PreprocessConfig):
        raise TypeError(
            f"expected a PreprocessConfig, got {type(config).__name__}; for a checkpoint "
            "directory use vlkit.get_transform"
        )
    return ImageTransform(config, train=train)
