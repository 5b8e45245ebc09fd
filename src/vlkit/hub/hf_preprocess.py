"""Hugging Face `preprocessor_config.json` <-> `PreprocessConfig` (CLIP / SigLIP image processors).

`preprocess_config_from_hf` reads what transformers' `CLIPImageProcessor` /
`SiglipImageProcessor` would do into vlkit's `PreprocessConfig` (refusing what it cannot
express); `preprocess_config_to_hf` writes a config that those classes, and
`AutoImageProcessor`, load back to the same preprocessing. The transform itself is
`vlkit.data.transforms.ImageTransform`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlkit.data.preprocess_config import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    SIGLIP_MEAN,
    SIGLIP_STD,
    PreprocessConfig,
    as_height_width,
)

__all__ = ["HF_PREPROCESSOR_CONFIG", "preprocess_config_from_hf", "preprocess_config_to_hf"]

HF_PREPROCESSOR_CONFIG = "preprocessor_config.json"

# PIL resampling codes as stored in preprocessor_config.json ("resample").
_HF_RESAMPLE_CODES = {3: "bicubic", 2: "bilinear"}
# Not a transformers key: transformers keeps unknown keys as attributes and ignores them, so this
# records how vlkit rounds the crop offset without changing what transformers does.
_CROP_ROUNDING_KEY = "vlkit_crop_rounding"
# Same idea: which reference's order of operations vlkit reproduces (PreprocessConfig.pipeline).
_PIPELINE_KEY = "vlkit_pipeline"
_HF_PROCESSOR_TYPES = {"clip": "CLIPImageProcessor", "siglip": "SiglipImageProcessor"}


def _read_hf_config(source: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[dict, str]:
    if isinstance(source, Mapping):
        return dict(source), "preprocessor config"
    path = Path(source)
    if path.is_dir():
        file = path / HF_PREPROCESSOR_CONFIG
        if not file.is_file():
            raise FileNotFoundError(f"no {HF_PREPROCESSOR_CONFIG} in directory {path}")
    elif path.is_file():
        file = path
    else:
        raise FileNotFoundError(
            f"{path} does not exist (expected a directory with {HF_PREPROCESSOR_CONFIG})"
        )
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{file} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{file} does not hold a JSON object")
    return data, str(file)


def _size_dict(value: Any, where: str, key: str) -> dict[str, int]:
    # transformers' `get_size_dict`: a bare int is {"shortest_edge": n} for "size" (CLIP and
    # SigLIP processors set default_to_square=False) and a square for "crop_size"; a
    # (height, width) pair is {"height", "width"}.
    if isinstance(value, bool):
        raise ValueError(f"{where}: unsupported {key!r} value {value!r}")
    if isinstance(value, int):
        return {"shortest_edge": value} if key == "size" else {"height": value, "width": value}
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_int, value)):
        return {"height": value[0], "width": value[1]}
    if isinstance(value, Mapping):
        for name, size in value.items():
            if size is not None and not _is_int(size):
                raise ValueError(f"{where}: {key}.{name} must be an int, got {size!r}")
        return {k: v for k, v in value.items() if v is not None}
    raise ValueError(f"{where}: unsupported {key!r} value {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _stats(value: Any, where: str, key: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        values: tuple = (value,) * 3
    else:
        values = tuple(value) if isinstance(value, (list, tuple)) else ()
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if len(values) != 3 or not numbers:
        raise ValueError(f"{where}: {key} must be a number or 3 numbers, got {value!r}")
    return tuple(float(v) for v in values)


def preprocess_config_from_hf(
    source: str | os.PathLike[str] | Mapping[str, Any],
) -> PreprocessConfig:
    """Reads a Hugging Face `preprocessor_config.json` into a `PreprocessConfig`.

    Any configuration of transformers' `CLIPImageProcessor` / `SiglipImageProcessor`:
    `size` as `{"shortest_edge": n}` (or a bare int) or `{"height", "width"}`; `crop_size`
    of any shape, smaller or larger than the resize; `do_resize`, `do_center_crop`,
    `do_rescale`, `do_normalize` true or false; any `rescale_factor`; `image_mean` /
    `image_std` as one or three values; `resample` 2 (bilinear) or 3 (bicubic). Missing keys
    take the processor class defaults. The result reproduces transformers' default backend
    (`pipeline="transformers"`) unless the file was written by `preprocess_config_to_hf`,
    which records vlkit's pipeline and crop rounding.

    Args:
        source: A directory containing `preprocessor_config.json`, the JSON file itself, or
            its parsed contents.

    Returns:
        The equivalent config.

    Raises:
        FileNotFoundError: The directory has no `preprocessor_config.json`.
        ValueError: The file asks for preprocessing vlkit does not implement; the message
            names the key.
    """
    data, where = _read_hf_config(source)
    kind = str(data.get("image_processor_type") or data.get("feature_extractor_type") or "")
    siglip = "siglip" in kind.lower()

    if not data.get("do_convert_rgb", True) and data.get("do_convert_rgb") is not None:
        raise ValueError(f"{where}: do_convert_rgb=false is not supported")
    if data.get("do_pad"):
        raise ValueError(f"{where}: do_pad=true is not supported")
    rescale_factor = None
    if data.get("do_rescale", True):
        rescale_factor = float(data.get("rescale_factor", 1 / 255))

    default_size = {"height": 224, "width": 224} if siglip else {"shortest_edge": 224}
    size = _size_dict(data.get("size", default_size), where, "size")
    do_resize = bool(data.get("do_resize", True))
    resize_size: int | tuple[int, int]
    if set(size) == {"shortest_edge"}:
        resize_mode, resize_size = "shortest", size["shortest_edge"]
        uncropped: tuple[int, int] = (resize_size, resize_size)
    elif set(size) == {"height", "width"}:
        resize_mode, resize_size = "squash", (size["height"], size["width"])
        uncropped = resize_size
    else:
        raise ValueError(
            f"{where}: size {size} is not supported (use shortest_edge, or height and width)"
        )
    if not do_resize:
        resize_mode = "none"

    center_crop = bool(data.get("do_center_crop", not siglip))
    if center_crop:
        crop = _size_dict(data.get("crop_size", {"height": 224, "width": 224}), where, "crop_size")
        if set(crop) != {"height", "width"}:
            raise ValueError(f"{where}: crop_size {crop} needs height and width")
        output = (crop["height"], crop["width"])
    else:
        output = uncropped

    resample = data.get("resample", 3)
    if resample not in _HF_RESAMPLE_CODES:
        raise ValueError(
            f"{where}: resample {resample!r} is not supported (3 = bicubic, 2 = bilinear)"
        )

    if data.get("do_normalize", True):
        mean = _stats(
            data.get("image_mean", SIGLIP_MEAN if siglip else OPENAI_CLIP_MEAN), where, "image_mean"
        )
        std = _stats(
            data.get("image_std", SIGLIP_STD if siglip else OPENAI_CLIP_STD), where, "image_std"
        )
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    image_size: int | tuple[int, int] = output[0] if output[0] == output[1] else output
    if resize_mode == "none":
        resize_size = None
    elif resize_mode == "shortest" and resize_size == output[0] == output[1]:
        resize_size = None  # the plain CLIP layout: resize and crop to the same side
    elif resize_mode == "squash" and tuple(resize_size) == output:
        resize_size = None
    return PreprocessConfig(
        image_size=image_size,
        resize_mode=resize_mode,
        interpolation=_HF_RESAMPLE_CODES[resample],
        mean=mean,
        std=std,
        crop_rounding=data.get(_CROP_ROUNDING_KEY, "floor"),
        # Files written by an older vlkit carry only the crop-rounding key; vlkit then resized
        # with PIL after converting, which the PIL-based open_clip pipeline reproduces best.
        pipeline=data.get(
            _PIPELINE_KEY, "open_clip" if _CROP_ROUNDING_KEY in data else "transformers"
        ),
        resize_size=resize_size,
        center_crop=center_crop,
        rescale_factor=rescale_factor,
    )


def preprocess_config_to_hf(config: PreprocessConfig, model_type: str) -> dict[str, Any]:
    """Writes a `PreprocessConfig` as a Hugging Face `preprocessor_config.json` dict.

    transformers' `CLIPImageProcessor` (model_type "clip") or `SiglipImageProcessor` ("siglip")
    loaded from it, and `AutoImageProcessor`, resize, crop, rescale and normalize the same way.
    What transformers cannot express: it always floors the crop offset (vlkit's default
    `crop_rounding="round"` can sit one pixel off on some sizes), and it converts to RGB
    before resizing (an `pipeline="open_clip"` config resizes first, which differs on images
    that are not RGB). Both settings are kept under extra keys that transformers ignores, so
    `preprocess_config_from_hf` reads back exactly `config`.

    Args:
        config: The preprocessing to write.
        model_type: "clip" or "siglip"; picks `image_processor_type`.

    Returns:
        A JSON-serialisable dict.

    Raises:
        ValueError: `model_type` is unknown, or `resize_mode="longest"` (open_clip's letterbox,
            which transformers' CLIP / SigLIP processors do not have).
    """
    if model_type not in _HF_PROCESSOR_TYPES:
        raise ValueError(
            f"model_type must be one of {sorted(_HF_PROCESSOR_TYPES)}, got {model_type!r}"
        )
    if config.resize_mode == "longest":
        raise ValueError(
            "resize_mode='longest' (open_clip's letterbox) has no transformers equivalent"
        )
    height, width = config.output_size
    if config.resize_mode == "shortest":
        edge = config.resize_size if config.resize_size is not None else height
        size: dict[str, int] = {"shortest_edge": int(edge)}
    else:
        h, w = as_height_width(config.resize_size or config.image_size)
        size = {"height": h, "width": w}
    codes = {name: code for code, name in _HF_RESAMPLE_CODES.items()}
    normalize = not (all(m == 0 for m in config.mean) and all(s == 1 for s in config.std))
    data: dict[str, Any] = {
        "image_processor_type": _HF_PROCESSOR_TYPES[model_type],
        "do_convert_rgb": True,
        "do_resize": config.resize_mode != "none",
        "size": size,
        # open_clip's "random" interpolation is bicubic at eval time.
        "resample": codes.get(config.interpolation, 3),
        "do_center_crop": config.center_crop,
        "crop_size": {"height": height, "width": width},
        "do_rescale": config.rescale_factor is not None,
        "rescale_factor": config.rescale_factor if config.rescale_factor is not None else 1 / 255,
        "do_normalize": normalize,
        "image_mean": list(config.mean),
        "image_std": list(config.std),
        _CROP_ROUNDING_KEY: config.crop_rounding,
        _PIPELINE_KEY: config.pipeline,
    }
    return data
