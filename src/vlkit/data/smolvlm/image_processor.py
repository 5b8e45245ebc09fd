"""SmolVLM / Idefics3 pixel preprocessing: longest-edge resize, tile splitting, video frames.

Mirrors transformers' PIL backend, `models/smolvlm/image_processing_pil_smolvlm.py`
(`SmolVLMImageProcessorPil`), bit for bit: every resize is a Pillow resize of a uint8 image, then
rescale in float64 -> float32 and normalise in float32 like `image_transforms.rescale` /
`normalize`. transformers' default backend (`image_processing_smolvlm.py`, torchvision) resizes
uint8 tensors with torchvision's own Lanczos kernel, which differs from Pillow's by 1-2 uint8
levels on photos and up to 7 when a 512 x 31 strip is squashed to a square tile (tested in
`tests/test_smolvlm_processor.py`); its video processor (`video_processing_smolvlm.py`) is
torchvision-only, so video frames differ by 1 level there.

An image of `size.longest_edge` is cut into `rows x cols` tiles of `max_image_size.longest_edge`
(the vision encoder's input) and followed by a global view of the whole image squeezed to one
tile; the text side (`processor.py`, `prompts.py`) gives each tile its `<row_r_col_c>` marker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlkit.data.images import load_image, to_rgb

__all__ = [
    "SmolVLMImageConfig",
    "SmolVLMVideoConfig",
    "Video",
    "as_rgb_image",
    "longest_edge_size",
    "pad_images",
    "preprocess_image",
    "preprocess_video",
    "sample_frame_indices",
    "tile_multiple_size",
]

# transformers' `MAX_IMAGE_SIZE` (image_processing_smolvlm.py): a 4k cap after the first resize.
MAX_IMAGE_SIZE = 4096
# Per-call keyword arguments that transformers' SmolVLM image processor takes (ImagesKwargs plus
# SmolVLMImageProcessorKwargs), under their transformers names.
IMAGE_KWARGS = (
    "size", "max_image_size", "resample", "do_resize", "do_image_splitting", "do_rescale",
    "rescale_factor", "do_normalize", "image_mean", "image_std", "do_pad", "do_convert_rgb",
)  # fmt: skip


@dataclass
class SmolVLMImageConfig:
    """Image settings of a SmolVLM `preprocessor_config.json`.

    Attributes:
        longest_edge: `size.longest_edge`, the first resize target (1536 for SmolVLM2).
        tile_size: `max_image_size.longest_edge`, side of every tile and of the global view.
        image_mean: Per-channel mean subtracted after rescaling.
        image_std: Per-channel std divided by after subtracting the mean.
        rescale_factor: Multiplier taking uint8 values to [0, 1].
        resample: Pillow resampling filter id (1 = LANCZOS, the SmolVLM default).
        do_resize: Resize the longest edge to `longest_edge` first.
        do_image_splitting: Cut images into tiles plus a global view; otherwise squash to a tile.
        do_rescale: Apply `rescale_factor`.
        do_normalize: Apply `image_mean` / `image_std`.
        do_pad: Pad to the batch's largest image count and size, with `pixel_attention_mask`.
        do_convert_rgb: Convert inputs to RGB first (transparency composited onto white).
        resize_to: `(height, width)` when `size` is `{"height", "width"}` (an exact first resize)
            instead of `{"longest_edge"}`.
    """

    longest_edge: int | None
    tile_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    rescale_factor: float = 1 / 255
    resample: int = Image.Resampling.LANCZOS
    do_resize: bool = True
    do_image_splitting: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    do_pad: bool = True
    do_convert_rgb: bool = True
    resize_to: tuple[int, int] | None = None

    def with_overrides(self, **kwargs: Any) -> SmolVLMImageConfig:
        """A copy with transformers-style per-call settings applied (`size`, `max_image_size`,
        `do_image_splitting`, `image_mean`, ... as `IMAGE_KWARGS`; None means "unchanged").

        Raises:
            TypeError: An unknown keyword, named.
            ValueError: A `size` / `max_image_size` dict without the keys transformers reads.
        """
        changes: dict[str, Any] = {}
        names = {f.name for f in fields(self)}
        for key, value in kwargs.items():
            if value is None:
                continue
            if key == "size":
                changes.update(_parse_size(value))
            elif key == "max_image_size":
                if not isinstance(value, dict) or "longest_edge" not in value:
                    raise ValueError(f"max_image_size={value!r}: needs a 'longest_edge' key")
                changes["tile_size"] = int(value["longest_edge"])
            elif key in ("image_mean", "image_std"):
                values = [value] * 3 if isinstance(value, int | float) else list(value)
                changes[key] = tuple(float(v) for v in values)
            elif key == "resample":
                changes[key] = int(value)
            elif key in names and key not in ("longest_edge", "tile_size", "resize_to"):
                changes[key] = value
            else:
                raise TypeError(f"unknown image processor keyword argument {key!r}")
        return replace(self, **changes)


def _parse_size(size: Any) -> dict[str, Any]:
    # transformers' SmolVLM resize reads `longest_edge`, else `height` and `width`; a bare int
    # is a square (`get_size_dict(42)` -> {"height": 42, "width": 42}).
    if isinstance(size, int) and not isinstance(size, bool):
        size = {"height": size, "width": size}
    if isinstance(size, dict) and size.get("longest_edge"):
        return {"longest_edge": int(size["longest_edge"]), "resize_to": None}
    if isinstance(size, dict) and size.get("height") and size.get("width"):
        return {"longest_edge": None, "resize_to": (int(size["height"]), int(size["width"]))}
    raise ValueError(f"size={size!r}: needs 'longest_edge', or 'height' and 'width'")


@dataclass
class SmolVLMVideoConfig:
    """Video settings: `video_sampling` of a SmolVLM2 `preprocessor_config.json`.

    Attributes:
        longest_edge: `video_sampling.video_size.longest_edge`, the first resize of each frame.
        max_frames: `video_sampling.max_frames`, the most frames sampled from one video.
        fps: `video_sampling.fps`, the target sampling rate in frames per second.
        do_sample_frames: Sample frames by default (transformers' default is False: frames are
            taken as given, already sampled).
        frame_config: Normalisation, resampling and tile size (`max_image_size`) of the video
            processor, which may differ from the image processor's; None: the image settings.
    """

    longest_edge: int
    max_frames: int
    fps: float
    do_sample_frames: bool = False
    frame_config: SmolVLMImageConfig | None = None


@dataclass
class Video:
    """A video as decoded frames.

    Attributes:
        frames: The frames, in order.
        fps: Frame rate of `frames` (of the source video when `frame_indices` is given).
        frame_indices: Index of each frame in the source video, when `frames` are already a
            sample of it; defaults to `0..len(frames)-1`. Timestamps are `frame_indices / fps`.
        duration: Length of the source video in seconds; defaults to `len(frames) / fps`.
    """

    frames: list[Image.Image]
    fps: float | None = None
    frame_indices: list[int] | None = None
    duration: float | None = None

    @classmethod
    def from_directory(cls, directory: str | Path, fps: float | None = None) -> Video:
        """Reads every image file in `directory`, sorted by file name, as the frames."""
        suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
        paths = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in suffixes)
        if not paths:
            raise FileNotFoundError(f"{directory}: no frame images ({', '.join(sorted(suffixes))})")
        return cls(frames=[load_image(p) for p in paths], fps=fps)

    @property
    def indices(self) -> list[int]:
        """Source-video index of each frame."""
        if self.frame_indices is not None:
            return list(self.frame_indices)
        return list(range(len(self.frames)))


def longest_edge_size(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """(height, width) with the longest side at `longest_edge`, the other side rounded up to even.

    transformers' `_resize_output_size_rescale_to_max_len` followed by
    `_resize_output_size_scale_below_upper_bound(MAX_IMAGE_SIZE)` (image_processing_smolvlm.py):
    the short side is truncated with `int(...)`, then bumped to the next even number.
    """
    height, width = _scale_longest_edge(height, width, longest_edge)
    # The 4k cap (never reached for SmolVLM sizes; kept for exact parity).
    aspect_ratio = width / height
    if width >= height and width > MAX_IMAGE_SIZE:
        width, height = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect_ratio)
    elif height > width and height > MAX_IMAGE_SIZE:
        height, width = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect_ratio)
    return max(height, 1), max(width, 1)


def tile_multiple_size(height: int, width: int, tile_size: int) -> tuple[int, int]:
    """(height, width) rounded up to multiples of `tile_size`, as `resize_for_vision_encoder`.

    The long side is rounded up first; the short side is derived from it through the aspect ratio
    (truncated) and rounded up too, exactly as transformers does.
    """
    aspect_ratio = width / height
    if width >= height:
        width = math.ceil(width / tile_size) * tile_size
        height = math.ceil(int(width / aspect_ratio) / tile_size) * tile_size
    else:
        height = math.ceil(height / tile_size) * tile_size
        width = math.ceil(int(height * aspect_ratio) / tile_size) * tile_size
    return height, width


def _resize(image: Image.Image, height: int, width: int, resample: int) -> Image.Image:
    # Pillow returns a copy, unfiltered, when the size is unchanged; transformers' np_resize too.
    return image.resize((width, height), resample=Image.Resampling(resample))


def as_rgb_image(image: Any, do_convert_rgb: bool = True) -> Image.Image:
    """A PIL image, a uint8 numpy array (HWC or CHW, 1, 3 or 4 channels) or a uint8 torch tensor
    -> the PIL image transformers' PIL backend resizes (`PilBackend.process_image`).

    RGB conversion of PIL images is `vlkit.data.images.to_rgb`, which is transformers'
    `image_transforms.convert_to_rgb`: a band "A" or a `transparency` entry is composited onto
    white, every other mode goes through PIL's `convert("RGB")` (16-bit and float images are
    clipped to 0..255, as in transformers). Arrays: 1 channel is repeated, 4 channels are
    blended onto white and rounded.

    Raises:
        ValueError: An array that is not uint8, or has no 1/3/4-channel axis first or last.
    """
    if isinstance(image, Image.Image):
        return to_rgb(image) if do_convert_rgb else image
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f"unsupported image type {type(image).__name__}: PIL, numpy or torch")
    if image.dtype != np.uint8:
        raise ValueError(
            f"image array of dtype {image.dtype}: SmolVLM inputs must be uint8 (0..255) arrays"
        )
    if image.ndim == 2:
        image = image[:, :, None]
    elif image.ndim == 3 and image.shape[0] in (1, 3, 4):
        # transformers' infer_channel_dimension_format: channels first wins when ambiguous.
        image = np.moveaxis(image, 0, -1)
    elif image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image array of shape {image.shape}: expected (H, W, C) or (C, H, W)")
    if do_convert_rgb and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif do_convert_rgb and image.shape[-1] == 4:
        alpha = image[..., 3:4] / 255
        image = np.round(alpha * image[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return Image.fromarray(
        np.ascontiguousarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    )


def _to_array(image: Image.Image, config: SmolVLMImageConfig) -> np.ndarray:
    """uint8 HWC image -> (C, H, W) float32, as transformers' `rescale` then `normalize`."""
    array = np.asarray(image)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W) uint8
    if config.do_rescale:
        # float64 product, then float32: `image_transforms.rescale`.
        array = (array.astype(np.float64) * config.rescale_factor).astype(np.float32)
    else:
        array = array.astype(np.float32)
    if config.do_normalize:
        mean = np.asarray(config.image_mean, dtype=np.float32)[:, None, None]
        std = np.asarray(config.image_std, dtype=np.float32)[:, None, None]
        array = (array - mean) / std
    return array


def preprocess_image(
    image: Image.Image, config: SmolVLMImageConfig
) -> tuple[list[np.ndarray], int, int]:
    """One image -> its tiles (row-major) and the global view, with the tile grid.

    Args:
        image: A PIL image, or a uint8 array / tensor (see `as_rgb_image`); converted to RGB.
        config: Image settings.

    Returns:
        `(views, rows, cols)`: `views` is a list of `(3, H, W)` float32 arrays, `rows * cols`
        tiles then the global view when the image was split, else the single view; `rows` and
        `cols` are 0 when not split (transformers' convention, read by the prompt builder).
    """
    image = as_rgb_image(image, config.do_convert_rgb)
    if config.do_resize:
        image = _resize(image, *_first_resize_size(image, config), config.resample)
    tile = config.tile_size
    if not config.do_image_splitting:
        # Unsplit images are squashed to a square tile (`_preprocess`, else branch).
        return [_to_array(_resize(image, tile, tile, config.resample), config)], 0, 0
    image = _resize(image, *tile_multiple_size(image.height, image.width, tile), config.resample)
    if image.height <= tile and image.width <= tile:
        return [_to_array(image, config)], 0, 0
    rows, cols = image.height // tile, image.width // tile
    views = [
        image.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile))
        for r in range(rows)
        for c in range(cols)
    ]
    # The global view is resized from the tile-multiple image, not from the original.
    views.append(_resize(image, tile, tile, config.resample))
    return [_to_array(v, config) for v in views], rows, cols


def _first_resize_size(image: Image.Image, config: SmolVLMImageConfig) -> tuple[int, int]:
    if config.resize_to is not None:
        return config.resize_to
    if config.longest_edge is None:
        raise ValueError("size: needs 'longest_edge', or 'height' and 'width'")
    return longest_edge_size(image.height, image.width, config.longest_edge)


def pad_images(batch: list[list[np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pads views to the batch's largest count, height and width (bottom/right).

    Args:
        batch: Per sample, a list of `(C, H, W)` float32 arrays (possibly empty).

    Returns:
        `pixel_values` `(B, N, C, H, W)` float32 and `pixel_attention_mask` `(B, N, H, W)` int64,
        1 on real pixels; padding views are all zero with an all-zero mask.
    """
    views = [v for sample in batch for v in sample]
    if not views:
        raise ValueError("No images found in the batch.")
    count = max(len(sample) for sample in batch)
    height = max(v.shape[1] for v in views)
    width = max(v.shape[2] for v in views)
    channels = views[0].shape[0]
    pixel_values = torch.zeros(len(batch), count, channels, height, width)
    mask = torch.zeros(len(batch), count, height, width, dtype=torch.int64)
    for i, sample in enumerate(batch):
        for j, view in enumerate(sample):
            pixel_values[i, j, :, : view.shape[1], : view.shape[2]] = torch.from_numpy(view)
            mask[i, j, : view.shape[1], : view.shape[2]] = 1
    return pixel_values, mask


def sample_frame_indices(
    total_frames: int, video_fps: float, duration: float, max_frames: int, fps: float
) -> list[int]:
    """Uniformly spaced frame indices, as `SmolVLMVideoProcessor.sample_frames`.

    `min(round(fps * duration), max_frames)` frames (at least 1), spread with `np.linspace` over
    the whole video, or over the video less one second at each end when it is long enough
    (`duration - 2 > max_frames * fps`); duplicates are dropped.
    """
    desired = max(min(int(round(fps * duration)), max_frames), 1)
    start, end = 0, total_frames - 1
    skip_secs = 1
    if duration - 2 * skip_secs > max_frames * fps:
        start = int(skip_secs * video_fps)
        end = int(total_frames - skip_secs * video_fps)
    start, end = max(0, start), min(end, total_frames - 1)
    if start >= end:
        start, end = 0, total_frames - 1
    return np.unique(np.linspace(start, end, desired, dtype=int)).tolist()


def preprocess_video(
    frames: list[Any], longest_edge: int | None, config: SmolVLMImageConfig
) -> list[np.ndarray]:
    """Frames -> `(3, tile, tile)` float32 arrays, never split.

    `SmolVLMVideoProcessor.resize`: the longest edge goes to `longest_edge` (the video's own
    rounding: no 4k cap; `config.resize_to` instead when set), then the frame is squashed to the
    tile square like an unsplit image. `config.do_resize=False` skips both.
    """
    views = []
    for frame in frames:
        frame = as_rgb_image(frame, config.do_convert_rgb)
        if config.do_resize:
            # video_processing_smolvlm.get_resize_output_image_size: same rounding, no 4k cap.
            if config.resize_to is not None:
                size = config.resize_to
            else:
                edge = min(MAX_IMAGE_SIZE, longest_edge or config.longest_edge or 0)
                size = _scale_longest_edge(frame.height, frame.width, edge)
            frame = _resize(frame, *size, config.resample)
            frame = _resize(frame, config.tile_size, config.tile_size, config.resample)
        views.append(_to_array(frame, config))
    return views


def _scale_longest_edge(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    # The longest side to `longest_edge`; the other truncated by `int(...)`, then made even.
    aspect_ratio = width / height
    if width >= height:
        width, height = longest_edge, int(longest_edge / aspect_ratio)
        height += height % 2
    else:
        height, width = longest_edge, int(longest_edge * aspect_ratio)
        width += width % 2
    return max(height, 1), max(width, 1)
