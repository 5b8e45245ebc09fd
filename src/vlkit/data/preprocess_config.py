"""The image preprocessing a checkpoint expects, as a small typed config."""

from __future__ import annotations

from dataclasses import dataclass

# OpenAI CLIP's normalization statistics (CLIP repo, clip/clip.py `_transform`).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# SigLIP maps pixels to [-1, 1] (big_vision `value_range(-1, 1)`).
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# What each `pipeline` reproduces (vlkit.data.transforms explains the differences).
PIPELINES = ("open_clip", "transformers", "transformers_pil")
RESIZE_MODES = ("shortest", "longest", "squash", "none")
INTERPOLATIONS = ("bicubic", "bilinear", "random")


def _size(value: int | tuple[int, int] | list[int] | None, name: str) -> int | tuple[int, int]:
    # JSON gives lists; a square (h, w) pair stays a pair so that a round trip is exact.
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{name} must be an int or (height, width), got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
        return value
    pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be an int or (height, width), got {value!r}")
    return pair


def as_height_width(size: int | tuple[int, int]) -> tuple[int, int]:
    """`size` as `(height, width)`: an int is a square."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


@dataclass
class PreprocessConfig:
    """How raw images become model input.

    Attributes:
        image_size: The model input: an int for a square, or `(height, width)`.
        resize_mode: "shortest" resizes the shortest side to `resize_size` then center-crops
            to `image_size` (CLIP); "squash" resizes straight to `resize_size` (SigLIP);
            "longest" (open_clip only) resizes the longest side to fit and pads with
            `fill_color` (letterbox); "none" does not resize (transformers' `do_resize=false`).
        interpolation: "bicubic", "bilinear", or open_clip's "random" (bicubic at eval time,
            as open_clip's `image_transform` treats it).
        mean: Per-channel mean subtracted after scaling pixels. Mean 0 and std 1 mean "no
            normalization" (transformers' `do_normalize=false`).
        std: Per-channel standard deviation.
        crop_rounding: How the center-crop offset `(side - crop) / 2` is made an integer when
            the difference is odd. "round" is torchvision's `CenterCrop`
            (`int(round(d / 2))`, Python's round-half-to-even), used by open_clip; "floor" is
            transformers' image processors (`d // 2`). They differ by one pixel when
            `d % 4 == 3`.
        pipeline: Which reference's order of operations to reproduce, set from the
            checkpoint's origin. "open_clip": geometry on the PIL image in its own mode, then
            PIL `convert("RGB")` (open_clip/transform.py puts `_convert_to_rgb` last).
            "transformers": transformers' default `CLIPImageProcessor` / `SiglipImageProcessor`
            (the torchvision backend): convert to RGB first (transparency onto white), resize
            the uint8 tensor with `torch.nn.functional.interpolate(antialias=True)`.
            "transformers_pil": `CLIPImageProcessorPil` / `SiglipImageProcessorPil`: convert
            first, resize with PIL.
        resize_size: The resize target when it differs from `image_size`: the shortest edge
            for "shortest" (transformers' `size={"shortest_edge": n}` with a separate
            `crop_size`), `(height, width)` for "squash". None: derived from `image_size`.
        center_crop: Crop (or zero-pad) the resized image to `image_size` around its center.
            open_clip always crops in "shortest" mode; transformers' `do_center_crop`.
        fill_color: open_clip's padding value for "longest" mode (`fill_color`).
        rescale_factor: Pixel scale before normalization (1/255); None skips it
            (transformers' `do_rescale=false`). open_clip pipelines always use 1/255.
        rescale_high_bit_depth: Opt-in: scale 16-bit / 32-bit integer and float images to 8
            bits before any other step. False (both references): PIL's conversion clips
            values above 255.
    """

    image_size: int | tuple[int, int] = 224
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    crop_rounding: str = "round"
    pipeline: str = "open_clip"
    resize_size: int | tuple[int, int] | None = None
    center_crop: bool = True
    fill_color: int = 0
    rescale_factor: float | None = 1 / 255
    rescale_high_bit_depth: bool = False

    def __post_init__(self) -> None:
        self.image_size = _size(self.image_size, "image_size")
        if self.resize_size is not None:
            self.resize_size = _size(self.resize_size, "resize_size")
        for name, value, allowed in (
            ("resize_mode", self.resize_mode, RESIZE_MODES),
            ("interpolation", self.interpolation, INTERPOLATIONS),
            ("crop_rounding", self.crop_rounding, ("round", "floor")),
            ("pipeline", self.pipeline, PIPELINES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.pipeline == "open_clip" and self.rescale_factor != 1 / 255:
            raise ValueError("rescale_factor must be 1/255 with pipeline='open_clip'")
        if self.pipeline != "open_clip" and self.resize_mode == "longest":
            raise ValueError("resize_mode='longest' exists only with pipeline='open_clip'")
        if self.resize_mode == "shortest" and isinstance(self.resize_size, tuple):
            raise ValueError("resize_size must be an int (the shortest edge) for 'shortest'")
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values")
        self.fill_color = int(self.fill_color)
        if self.rescale_factor is not None:
            self.rescale_factor = float(self.rescale_factor)

    @property
    def output_size(self) -> tuple[int, int]:
        """`(height, width)` of the model input."""
        return as_height_width(self.image_size)
