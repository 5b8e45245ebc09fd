"""transformers' CLIP / SigLIP image processors, reproduced (`PreprocessConfig.pipeline`).

- `transformers_pixels` ("transformers"): the default `CLIPImageProcessor` /
  `SiglipImageProcessor`, the `TorchvisionBackend` (transformers/image_processing_backends.py)
  that `AutoImageProcessor` returns when torchvision is installed: `convert_to_rgb` first
  (transparency onto white), torchvision v2 `resize` on the uint8 tensor
  (`interpolate(antialias=True)`), center crop with a floored offset, fused rescale +
  normalize.
- `transformers_pil_pixels` ("transformers_pil"): `CLIPImageProcessorPil` /
  `SiglipImageProcessorPil` (`PilBackend`): the same conversion, PIL resize, numpy crop /
  rescale / normalize (transformers/image_transforms.py).

Both take PIL images, numpy arrays and torch tensors, channels first or last, as the
processors do (`infer_channel_dimension_format` with 1, 3 or 4 channels).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from vlkit.data.images import scale_to_8bit, to_rgb
from vlkit.data.preprocess_config import PreprocessConfig, as_height_width
from vlkit.data.preprocess_pipelines import (
    array_to_chw_tensor,
    crop_tensor,
    infer_channels_first,
    pil_resample,
    resize_tensor,
    shortest_side_size,
)

__all__ = ["transformers_pil_pixels", "transformers_pixels"]


def _tensor_to_rgb(tensor: torch.Tensor) -> torch.Tensor:
    # TorchvisionBackend.convert_to_rgb on a (C, H, W) tensor: grey -> 3 channels; 4 channels
    # composited onto white through float32 (torchvision `to_dtype(scale=True)` both ways).
    if tensor.shape[0] == 1:
        tensor = tensor.repeat(3, 1, 1)
    if tensor.shape[0] == 4:
        if tensor.is_floating_point() and (tensor.min() < 0.0 or tensor.max() > 1.0):
            raise ValueError("a 4-channel float image must hold values in [0, 1]")
        hwc = tensor.movedim(0, -1)
        dtype = hwc.dtype
        floats = hwc.to(torch.float32)
        if not hwc.is_floating_point():
            floats = floats.mul_(1.0 / 255)
        floats = floats[..., :3] * floats[..., 3:] + (1 - floats[..., 3:])
        hwc = floats.to(dtype) if dtype.is_floating_point else floats.mul(255.999).to(dtype)
        tensor = hwc.movedim(-1, 0)
    return tensor


def _hf_resize_size(height: int, width: int, config: PreprocessConfig) -> tuple[int, int]:
    if config.resize_mode == "shortest":
        edge = config.resize_size if config.resize_size is not None else config.output_size[0]
        return shortest_side_size(height, width, edge)
    return as_height_width(config.resize_size or config.image_size)


def _identity_normalization(config: PreprocessConfig) -> bool:
    return all(m == 0.0 for m in config.mean) and all(s == 1.0 for s in config.std)


def transformers_pixels(
    image: Image.Image | np.ndarray | torch.Tensor, config: PreprocessConfig
) -> torch.Tensor:
    """transformers' default (torchvision-backend) CLIP / SigLIP image processor."""
    if isinstance(image, Image.Image):
        # PIL keeps its mode up to here: convert_to_rgb sees the transparency.
        if config.rescale_high_bit_depth:
            image = scale_to_8bit(image)
        tensor = torch.from_numpy(np.array(to_rgb(image))).permute(2, 0, 1).contiguous()
    else:
        tensor = _tensor_to_rgb(array_to_chw_tensor(image)).contiguous()
    if config.resize_mode != "none":
        size = _hf_resize_size(tensor.shape[-2], tensor.shape[-1], config)
        tensor = resize_tensor(tensor, size, config.interpolation)
    if config.center_crop:
        tensor = crop_tensor(tensor, config.output_size)
    # `rescale_and_normalize`: with both steps, mean and std are divided by the rescale
    # factor and the uint8 tensor is normalized in one float32 pass.
    normalize = not _identity_normalization(config)
    if normalize:
        factor = 1.0 if config.rescale_factor is None else 1.0 / config.rescale_factor
        mean = torch.tensor(config.mean) * factor
        std = torch.tensor(config.std) * factor
        out = tensor.to(torch.float32)
        return out.sub(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1)).contiguous()
    if config.rescale_factor is not None:
        return (tensor * config.rescale_factor).contiguous()
    return tensor.contiguous()


# ---- transformers, PIL backend ---------------------------------------------------------------


def _numpy_to_rgb(array: np.ndarray) -> np.ndarray:
    # transformers `convert_to_rgb` on a channels-last array.
    channels = array.shape[-1]
    if channels == 1:
        return np.repeat(array, 3, axis=-1)
    if channels == 4:
        if np.issubdtype(array.dtype, np.floating) and (array.min() < 0.0 or array.max() > 1.0):
            raise ValueError("a 4-channel float image must hold values in [0, 1]")
        white = 255 if np.issubdtype(array.dtype, np.integer) else 1.0
        alpha = array[..., 3:4] / white
        composite = alpha * array[..., :3] + (1 - alpha) * white
        if white == 255:
            return np.round(composite).astype(array.dtype)
        return composite.astype(array.dtype)
    return array


def _np_resize(chw: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    # transformers `image_transforms.resize`: through a PIL image, rescaling floats in [0, 1].
    hwc = np.moveaxis(chw, 0, -1)
    rescale = False
    if hwc.dtype != np.uint8:
        if np.allclose(hwc, hwc.astype(int)):
            if hwc.min() < 0 or hwc.max() > 255:
                raise ValueError("an image array must hold values in [0, 255] or [0, 1]")
        elif hwc.min() >= 0 and hwc.max() <= 1:
            rescale = True
        else:
            raise ValueError("an image array must hold values in [0, 255] or [0, 1]")
    squeezed = np.squeeze(hwc, axis=-1) if hwc.shape[-1] == 1 else hwc
    if rescale:
        squeezed = (squeezed.astype(np.float64) * 255).astype(np.float32)
    pil = Image.fromarray(squeezed.astype(np.uint8))
    resized = np.array(pil.resize((size[1], size[0]), resample=resample))
    if resized.ndim == 2:
        resized = resized[..., None]
    out = np.moveaxis(resized, -1, 0)
    if rescale:
        out = (out.astype(np.float64) * (1 / 255)).astype(np.float32)
    return out


def _np_crop(chw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    # transformers `image_transforms.center_crop`: floored offset, zero padding (ceil split).
    crop_h, crop_w = size
    height, width = chw.shape[-2:]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if top >= 0 and left >= 0 and top + crop_h <= height and left + crop_w <= width:
        return chw[..., top : top + crop_h, left : left + crop_w]
    new_h, new_w = max(crop_h, height), max(crop_w, width)
    padded = np.zeros_like(chw, shape=chw.shape[:-2] + (new_h, new_w))
    top_pad, left_pad = math.ceil((new_h - height) / 2), math.ceil((new_w - width) / 2)
    padded[..., top_pad : top_pad + height, left_pad : left_pad + width] = chw
    top, left = top + top_pad, left + left_pad
    return padded[
        ..., max(0, top) : min(new_h, top + crop_h), max(0, left) : min(new_w, left + crop_w)
    ]


def transformers_pil_pixels(
    image: Image.Image | np.ndarray | torch.Tensor, config: PreprocessConfig
) -> torch.Tensor:
    """transformers' PIL-backend CLIP / SigLIP image processor (`...ImageProcessorPil`)."""
    if isinstance(image, Image.Image):
        if config.rescale_high_bit_depth:
            image = scale_to_8bit(image)
        chw = np.moveaxis(np.array(to_rgb(image)), -1, 0)
    else:
        array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if array.ndim == 2:
            array = array[..., None]
        hwc = np.moveaxis(array, 0, -1) if infer_channels_first(array.shape) else array
        chw = np.moveaxis(_numpy_to_rgb(hwc), -1, 0)
    if config.resize_mode != "none":
        size = _hf_resize_size(chw.shape[-2], chw.shape[-1], config)
        chw = _np_resize(chw, size, pil_resample(config.interpolation))
    if config.center_crop:
        chw = _np_crop(chw, config.output_size)
    if config.rescale_factor is not None:
        chw = (chw.astype(np.float64) * config.rescale_factor).astype(np.float32)
    if not _identity_normalization(config):
        if not np.issubdtype(chw.dtype, np.floating):
            chw = chw.astype(np.float32)
        mean = np.array(config.mean, dtype=chw.dtype)
        std = np.array(config.std, dtype=chw.dtype)
        chw = ((chw.T - mean) / std).T
    return torch.from_numpy(np.ascontiguousarray(chw))
