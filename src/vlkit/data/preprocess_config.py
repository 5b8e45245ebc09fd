"""The image preprocessing a checkpoint expects, as a small typed config."""

from __future__ import annotations

from dataclasses import dataclass

# OpenAI CLIP's normalization statistics (CLIP repo, clip/clip.py `_transform`).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# SigLIP maps pixels to [-1, 1] (big_vision `value_range(-1, 1)`).
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass
class PreprocessConfig:
    """How raw images become model input.

    Attributes:
        image_size: Side of the square model input.
        resize_mode: "shortest" resizes the shortest side to `image_size` then center-crops
            (CLIP); "squash" resizes straight to `image_size` x `image_size` (SigLIP).
        interpolation: "bicubic" or "bilinear".
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation.
        crop_rounding: How the center-crop offset `(side - image_size) / 2` is made an
            integer when the difference is odd. "round" is torchvision's `CenterCrop`
            (`int(round(d / 2))`, Python's round-half-to-even), used by open_clip; "floor" is
            transformers' image processors (`d // 2`). They differ by one pixel when
            `d % 4 == 3`. Only matters for `resize_mode="shortest"`.
    """

    image_size: int = 224
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    crop_rounding: str = "round"

    def __post_init__(self) -> None:
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(
                f"resize_mode must be 'shortest' or 'squash', got {self.resize_mode!r}"
            )
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(
                f"interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}"
            )
        if self.crop_rounding not in ("round", "floor"):
            raise ValueError(
                f"crop_rounding must be 'round' or 'floor', got {self.crop_rounding!r}"
            )
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
