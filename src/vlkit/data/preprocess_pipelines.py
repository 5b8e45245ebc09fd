"""The open_clip preprocessing pipeline, and the torch resize / crop both references share.

`PreprocessConfig.pipeline` picks whose order of operations is reproduced, because the order
is what makes non-RGB images come out differently:

- `open_clip_pixels`: open_clip's `image_transform(..., is_train=False)`
  (open_clip/transform.py): resize / crop / letterbox on the PIL image *in its own mode*, then
  `_convert_to_rgb` (`MaybeConvertMode`, a plain `convert("RGB")`), `ToTensor`, `Normalize`.
  PIL then resizes modes "P" and "1" with nearest-neighbour, premultiplies alpha for "RGBA" /
  "LA", and drops the alpha band at the end (transparent pixels keep their stored colour).
  `open_clip_tensor_pixels` is the same transform on a float CHW tensor.
- transformers' two backends live in `vlkit.data.transformers_pipelines`.

torchvision is not a vlkit dependency: the few torchvision functions involved are reproduced
with the same PIL and torch calls (`resize_tensor` is torchvision v2's `resize_image`).
"""

from __future__ import annotations

import platform

import numpy as np
import torch
from PIL import Image, ImageOps

from vlkit.data.images import scale_to_8bit
from vlkit.data.preprocess_config import PreprocessConfig, as_height_width

__all__ = [
    "array_to_chw_tensor",
    "center_crop_or_pad",
    "crop_tensor",
    "infer_channels_first",
    "open_clip_geometry",
    "open_clip_pixels",
    "open_clip_tensor_pixels",
    "pil_resample",
    "pil_rgb_to_tensor",
    "resize_tensor",
    "shortest_side_size",
]


def pil_resample(interpolation: str) -> Image.Resampling:
    # open_clip: "random" is ignored at eval time and means bicubic (transform.py,
    # `interpolation_mode = BILINEAR if interpolation == 'bilinear' else BICUBIC`).
    if interpolation == "bilinear":
        return Image.Resampling.BILINEAR
    return Image.Resampling.BICUBIC


def shortest_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """`(height, width)` after resizing the shortest side to `size`.

    torchvision's `_compute_resized_output_size` and transformers'
    `get_resize_output_image_size` both truncate the long side with `int(size * long / short)`.
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _keep_ratio_size(height: int, width: int, target: tuple[int, int], longest: float) -> list:
    # open_clip `ResizeKeepRatio.get_params` (no random scale / aspect at eval time).
    ratio_h, ratio_w = height / target[0], width / target[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return [round(height / ratio), round(width / ratio)]


def _pil_pad(image: Image.Image, ltrb: list[int], fill: int) -> Image.Image:
    # torchvision `_functional_pil.pad` (constant mode) with `_parse_fill`.
    bands = len(image.getbands())
    fill_value: int | float | tuple = fill
    if bands > 1:
        fill_value = tuple([fill] * bands)
    if image.mode != "F":
        fill_value = (
            tuple(int(x) for x in fill_value) if isinstance(fill_value, tuple) else int(fill_value)
        )
    if image.mode == "P":
        palette = image.getpalette()
        padded = ImageOps.expand(image, border=tuple(ltrb), fill=fill_value)
        padded.putpalette(palette)
        return padded
    return ImageOps.expand(image, border=tuple(ltrb), fill=fill_value)


def center_crop_or_pad(
    image: Image.Image, size: tuple[int, int], fill: int = 0, rounding: str = "round"
) -> Image.Image:
    """open_clip's `center_crop_or_pad` (= torchvision `center_crop` with `fill`) on PIL.

    Pads with `fill` where the image is smaller than `size`, then crops around the center.
    """
    crop_h, crop_w = size
    width, height = image.size
    if crop_w > width or crop_h > height:
        ltrb = [
            (crop_w - width) // 2 if crop_w > width else 0,
            (crop_h - height) // 2 if crop_h > height else 0,
            (crop_w - width + 1) // 2 if crop_w > width else 0,
            (crop_h - height + 1) // 2 if crop_h > height else 0,
        ]
        image = _pil_pad(image, ltrb, fill)
        width, height = image.size
        if (crop_w, crop_h) == (width, height):
            return image
    if rounding == "round":
        top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
    else:
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return image.crop((left, top, left + crop_w, top + crop_h))


def _resize_pil(image: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    # torchvision F.resize on PIL returns the input when the size does not change.
    if (image.height, image.width) == tuple(size):
        return image
    if min(size) < 1:
        # open_clip fails here too (PIL: "height and width must be > 0").
        raise ValueError(
            f"a {image.width}x{image.height} image would be resized to {size[1]}x{size[0]}; "
            "it is too thin for this resize_mode"
        )
    return image.resize((size[1], size[0]), resample)


def open_clip_geometry(image: Image.Image, config: PreprocessConfig) -> Image.Image:
    """open_clip's eval-time resize / crop / letterbox, in the image's own PIL mode."""
    resample = pil_resample(config.interpolation)
    target = config.output_size
    mode = config.resize_mode
    if mode == "longest":
        size = _keep_ratio_size(image.height, image.width, target, longest=1.0)
        image = _resize_pil(image, size, resample)
        return center_crop_or_pad(image, target, config.fill_color, "round")
    if mode == "squash":
        resize = as_height_width(config.resize_size or config.image_size)
        image = _resize_pil(image, resize, resample)
    elif mode == "shortest":
        if config.resize_size is not None:
            size = shortest_side_size(image.height, image.width, config.resize_size)
        elif target[0] == target[1]:
            size = shortest_side_size(image.height, image.width, target[0])
        else:
            # open_clip uses `ResizeKeepRatio(image_size)` for a non-square target, with its
            # default BICUBIC whatever `interpolation` says.
            size = _keep_ratio_size(image.height, image.width, target, longest=0.0)
            resample = Image.Resampling.BICUBIC
        image = _resize_pil(image, size, resample)
    if config.center_crop:
        # torchvision `CenterCrop` (zero padding where the image is smaller); a no-op after
        # a squash to `image_size`.
        image = center_crop_or_pad(image, target, 0, config.crop_rounding)
    return image


def _normalize(tensor: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    # torchvision `Normalize` on float32: sub_(mean).div_(std) with float32 statistics.
    mean = torch.tensor(config.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float32).view(3, 1, 1)
    return tensor.sub_(mean).div_(std)


def open_clip_pixels(image: Image.Image, config: PreprocessConfig) -> torch.Tensor:
    """open_clip's eval transform on a PIL image (see the module docstring)."""
    if config.rescale_high_bit_depth:
        # vlkit's opt-in, the same in every pipeline: 8 bits first, then the reference's steps.
        image = scale_to_8bit(image)
    image = open_clip_geometry(image, config)
    return pil_rgb_to_tensor(image.convert("RGB"), config)


def pil_rgb_to_tensor(image: Image.Image, config: PreprocessConfig) -> torch.Tensor:
    """torchvision `ToTensor` (uint8 / 255) + `Normalize` on an RGB PIL image."""
    pixels = np.array(image, dtype=np.uint8)
    # Channels-first in uint8 before the float ops (as torchvision's `to_tensor`): the same values,
    # each float pass over contiguous memory (about 2x faster than on the permuted view).
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous().to(torch.float32).div_(255)
    return _normalize(tensor, config)


# ---- tensors (transformers' torchvision backend; open_clip on tensors) ---------------------


def infer_channels_first(shape: tuple[int, ...]) -> bool:
    """transformers' `infer_channel_dimension_format(num_channels=(1, 3, 4))` for 3-D arrays:
    channels first when the first axis could be channels (it wins a tie), else last."""
    if shape[0] in (1, 3, 4):
        return True
    if shape[-1] in (1, 3, 4):
        return False
    raise ValueError(f"cannot tell the channel axis of an image of shape {tuple(shape)}")


def array_to_chw_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        # np.asarray(PIL image) is read-only; torch warns on wrapping it without a copy.
        image = torch.from_numpy(image if image.flags.writeable else image.copy())
    tensor = image
    if tensor.ndim == 2:
        return tensor.unsqueeze(0)
    if tensor.ndim != 3:
        raise ValueError(
            f"expected an image with 2 or 3 dimensions, got shape {tuple(tensor.shape)}"
        )
    return tensor if infer_channels_first(tuple(tensor.shape)) else tensor.permute(2, 0, 1)


def _native_uint8(interpolation: str) -> bool:
    # torchvision v2 `_do_native_uint8_resize_on_cpu`: bilinear needs AVX2 / AVX512 / arm.
    if interpolation == "bilinear":
        capability = torch.backends.cpu.get_cpu_capability()
        return capability in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")
    return True


def resize_tensor(tensor: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    # torchvision v2 `resize_image` (antialias=True, align_corners=False) on CPU.
    if tuple(tensor.shape[-2:]) == tuple(size) or tensor.numel() == 0:
        return tensor
    dtype = tensor.dtype
    mode = "bilinear" if interpolation == "bilinear" else "bicubic"
    acceptable = [torch.float32, torch.float64] + ([torch.uint8] if _native_uint8(mode) else [])
    batch = tensor.reshape(1, *tensor.shape)
    cast = dtype not in acceptable
    if cast:
        batch = batch.to(torch.float32)
    out = torch.nn.functional.interpolate(
        batch, size=list(size), mode=mode, align_corners=False, antialias=True
    )
    if cast:
        if mode == "bicubic" and dtype == torch.uint8:
            out = out.clamp_(min=0, max=255)
        if not dtype.is_floating_point:
            out = out.round_()
        out = out.to(dtype)
    return out[0]


def crop_tensor(
    tensor: torch.Tensor, size: tuple[int, int], fill: float = 0, rounding: str = "floor"
) -> torch.Tensor:
    # TorchvisionBackend.center_crop (fill 0, offset int((h - th) / 2.0)) and torchvision
    # `center_crop` / open_clip `center_crop_or_pad` on tensors (offset rounded).
    crop_h, crop_w = size
    height, width = tensor.shape[-2:]
    if crop_w > width or crop_h > height:
        left = (crop_w - width) // 2 if crop_w > width else 0
        top = (crop_h - height) // 2 if crop_h > height else 0
        right = (crop_w - width + 1) // 2 if crop_w > width else 0
        bottom = (crop_h - height + 1) // 2 if crop_h > height else 0
        tensor = torch.nn.functional.pad(tensor, (left, right, top, bottom), value=float(fill))
        height, width = tensor.shape[-2:]
        if (crop_h, crop_w) == (height, width):
            return tensor
    if rounding == "round":
        top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
    else:
        top, left = int((height - crop_h) / 2.0), int((width - crop_w) / 2.0)
    return tensor[..., top : top + crop_h, left : left + crop_w]


def open_clip_tensor_pixels(
    image: np.ndarray | torch.Tensor, config: PreprocessConfig
) -> torch.Tensor:
    """open_clip's eval transform on a float image in [0, 1] (a CHW tensor, as open_clip
    takes it; a numpy array is read as the same tensor). `Resize` / `CenterCrop` act on the
    tensor (torch `interpolate(antialias=True)`), `MaybeToTensor` passes it through
    unscaled, then `Normalize`."""
    tensor = array_to_chw_tensor(image)
    if tensor.shape[0] == 1:
        tensor = tensor.repeat(3, 1, 1)
    if tensor.shape[0] != 3:
        raise ValueError(f"expected a 3-channel float image, got shape {tuple(tensor.shape)}")
    target = config.output_size
    height, width = tensor.shape[-2:]
    mode = config.resize_mode
    if mode == "longest":
        size = _keep_ratio_size(height, width, target, longest=1.0)
        tensor = resize_tensor(tensor, tuple(size), config.interpolation)
        tensor = crop_tensor(tensor, target, config.fill_color, "round")
    else:
        if mode == "squash":
            tensor = resize_tensor(
                tensor,
                as_height_width(config.resize_size or config.image_size),
                config.interpolation,
            )
        elif mode == "shortest":
            edge = config.resize_size or (target[0] if target[0] == target[1] else None)
            if edge is not None:
                size = shortest_side_size(height, width, edge)
            else:
                size = tuple(_keep_ratio_size(height, width, target, longest=0.0))
            tensor = resize_tensor(tensor, size, config.interpolation)
        if config.center_crop:
            tensor = crop_tensor(tensor, target, 0, config.crop_rounding)
    mean = torch.tensor(config.mean, dtype=tensor.dtype).view(3, 1, 1)
    std = torch.tensor(config.std, dtype=tensor.dtype).view(3, 1, 1)
    return tensor.sub(mean).div_(std).to(torch.float32).contiguous()
