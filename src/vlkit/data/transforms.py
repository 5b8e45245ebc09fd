"""Image preprocessing: PIL image -> normalized float32 tensor, matching open_clip and transformers.

Eval mode reproduces, on PIL images:

- open_clip's `image_transform(size, is_train=False)` (open_clip/transform.py): torchvision
  `Resize(size)` (shortest side, PIL resampling) + `CenterCrop(size)`, or `Resize((size, size))`
  for `resize_mode="squash"`, then `ToTensor` + `Normalize`. Bit-identical with
  `crop_rounding="round"`.
- transformers' PIL-backend processors `CLIPImageProcessorPil` / `SiglipImageProcessorPil`
  (transformers/image_processing_backends.py `PilBackend`): same resize (same output-size
  rule, same PIL call), center crop with a floored offset. Identical up to float32 rounding
  with `crop_rounding="floor"`.

transformers v5's *default* classes, `CLIPImageProcessor` / `SiglipImageProcessor` and what
`AutoImageProcessor` returns when torchvision is installed, are the `TorchvisionBackend`: they
resize uint8 tensors with `torch.nn.functional.interpolate(antialias=True)` instead of PIL. That
kernel is a port of PIL's, but it rounds differently on a fraction of a percent of the samples,
so those classes differ from PIL-based preprocessing (and from this module) by one uint8 level
(1/255/std, about 0.015 after CLIP normalization) on those samples.

Train mode is open_clip's default training transform: `RandomResizedCrop(size, scale=(0.9, 1.0),
interpolation=BICUBIC)` + `ToTensor` + `Normalize`, with the crop sampled exactly as torchvision's
`RandomResizedCrop.get_params` does (torchvision is not a runtime dependency of vlkit).

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

from vlkit.data.images import load_image, to_rgb
from vlkit.data.preprocess_config import PreprocessConfig

__all__ = ["ImageTransform", "get_transform", "random_resized_crop_params", "to_batch"]

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


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


def _shortest_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Output (width, height) when the shortest side is resized to `size`.

    torchvision's `_compute_resized_output_size` (transforms/functional.py) and transformers'
    `get_resize_output_image_size` (image_transforms.py) both truncate the long side with
    `int(size * long / short)`; the same expression is used here so float rounding agrees.
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _crop_offset(excess: int, rounding: str) -> int:
    # torchvision `center_crop`: int(round((h - th) / 2.0)), Python's round-half-to-even.
    # transformers `center_crop` (image_transforms.py) and the torchvision backend's
    # `center_crop`: (h - th) // 2 and int((h - th) / 2.0), i.e. floor for excess >= 0.
    if rounding == "round":
        return int(round(excess / 2.0))
    return excess // 2


class ImageTransform:
    """Turns a PIL image into the normalized `(3, S, S)` float32 tensor a model expects.

    Eval mode (`train=False`): resize ("shortest": shortest side to `image_size`, then center
    crop; "squash": straight to `image_size` x `image_size`) with PIL resampling, scale to
    [0, 1], normalize by `mean` / `std`. Train mode (`train=True`): open_clip's default
    `RandomResizedCrop(image_size, scale=(0.9, 1.0), interpolation=BICUBIC)` (bicubic
    regardless of `config.interpolation`, as open_clip hard-codes it), then the same scaling
    and normalization.

    Non-RGB inputs are converted with `vlkit.data.images.to_rgb` first (transparency
    composited onto white, as transformers does).

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
        # Same dtype and ops as torchvision's Normalize on a float32 tensor.
        self._mean = torch.tensor(config.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(config.std, dtype=torch.float32).view(3, 1, 1)

    @property
    def image_size(self) -> int:
        """Side of the square output."""
        return self.config.image_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r}, train={self.train})"

    def resize_and_crop(
        self, image: Image.Image, generator: torch.Generator | None = None
    ) -> Image.Image:
        """The geometric part of the transform: an RGB `image_size` x `image_size` PIL image.

        Args:
            image: Input image, any PIL mode.
            generator: Train mode: torch RNG for this call (default: the one given at
                construction, else the global RNG).
        """
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}")
        image = to_rgb(image)
        size = self.config.image_size
        if self.train:
            top, left, h, w = random_resized_crop_params(
                image.width, image.height, self.scale, self.ratio, generator or self.generator
            )
            # Crop first, then resize, as torchvision's `resized_crop` on PIL does; resizing
            # with `box=` instead would let the filter read pixels outside the crop.
            crop = image.crop((left, top, left + w, top + h))
            return crop.resize((size, size), Image.Resampling.BICUBIC)
        resample = _RESAMPLE[self.config.interpolation]
        if self.config.resize_mode == "squash":
            return image.resize((size, size), resample)
        new_w, new_h = _shortest_side_size(image.width, image.height, size)
        image = image.resize((new_w, new_h), resample)
        top = _crop_offset(new_h - size, self.config.crop_rounding)
        left = _crop_offset(new_w - size, self.config.crop_rounding)
        return image.crop((left, top, left + size, top + size))

    def __call__(
        self, image: Image.Image, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Transforms one image.

        Args:
            image: Input image, any PIL mode.
            generator: Train mode: torch RNG for this call (see `resize_and_crop`).

        Returns:
            A float32 tensor of shape `(3, image_size, image_size)`.
        """
        pixels = np.array(self.resize_and_crop(image, generator), dtype=np.uint8)
        # torchvision ToTensor: uint8 -> float32, divide by 255; then Normalize.
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).to(torch.float32).div(255)
        return tensor.sub_(self._mean).div_(self._std).contiguous()

    def to_batch(
        self,
        images: Sequence[Image.Image | str | os.PathLike[str]],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Transforms several images into one batch.

        Args:
            images: PIL images, or paths loaded with `vlkit.data.images.load_image`.
            generator: Train mode: torch RNG for the crops.

        Returns:
            A float32 tensor of shape `(len(images), 3, image_size, image_size)`.
        """
        if len(images) == 0:
            raise ValueError("to_batch needs at least one image")
        loaded = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
        return torch.stack([self(im, generator) for im in loaded])


def to_batch(
    images: Sequence[Image.Image | str | os.PathLike[str]],
    transform: ImageTransform | PreprocessConfig,
) -> torch.Tensor:
    """Transforms several images into a `(B, 3, S, S)` float32 batch.

    Args:
        images: PIL images, or paths loaded with `vlkit.data.images.load_image`.
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
