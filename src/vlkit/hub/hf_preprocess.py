"""Hugging Face `preprocessor_config.json` <-> `PreprocessConfig` (CLIP / SigLIP image processors).

`preprocess_config_from_hf` reads what transformers' `CLIPImageProcessor` /
`SiglipImageProcessor` would do into vlkit's `PreprocessConfig` (refusing what it cannot
express); `preprocess_config_to_hf` writes a config that those classes, and
`AutoImageProcessor`, load back to the same preprocessing. The transform itself is
`vlkit.data.transforms.ImageTransform`.
"""

from __future__ import annotations

import json
import math
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
)

__all__ = ["HF_PREPROCESSOR_CONFIG", "preprocess_config_from_hf", "preprocess_config_to_hf"]

HF_PREPROCESSOR_CONFIG = "preprocessor_config.json"

# PIL resampling codes as stored in preprocessor_config.json ("resample").
_HF_RESAMPLE_CODES = {3: "bicubic", 2: "bilinear"}
# Not a transformers key: transformers keeps unknown keys as attributes and ignores them, so this
# records how vlkit rounds the crop offset without changing what transformers does.
_CROP_ROUNDING_KEY = "vlkit_crop_rounding"
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
    # transformers' `get_size_dict` reads a bare int as {"shortest_edge": n} for "size" (both
    # CLIP and SigLIP processors set default_to_square=False) and as a square for "crop_size".
    if isinstance(value, int):
        return {"shortest_edge": value} if key == "size" else {"height": value, "width": value}
    if isinstance(value, Mapping):
        return {k: int(v) for k, v in value.items() if v is not None}
    raise ValueError(f"{where}: unsupported {key!r} value {value!r}")


def preprocess_config_from_hf(
    source: str | os.PathLike[str] | Mapping[str, Any],
) -> PreprocessConfig:
    """Reads a Hugging Face `preprocessor_config.json` into a `PreprocessConfig`.

    Supported: CLIP-style (`size={"shortest_edge": S}` or legacy `size=S`, center crop to
    `S` x `S`) and SigLIP-style (`size={"height": S, "width": S}`, no crop) processors with
    resample 3 (bicubic) or 2 (bilinear), rescale by 1/255 and `image_mean` / `image_std`.
    Missing keys take the CLIP / SigLIP processor class defaults (bicubic; OpenAI CLIP mean and
    std, or 0.5 for SigLIP). The crop offset is floored like transformers' processors unless
    the file was written by `preprocess_config_to_hf`, which records vlkit's rounding.

    Args:
        source: A directory containing `preprocessor_config.json`, the JSON file itself, or
            its parsed contents.

    Returns:
        The equivalent config.

    Raises:
        FileNotFoundError: The directory has no `preprocessor_config.json`.
        ValueError: The file asks for preprocessing `PreprocessConfig` cannot express.
    """
    data, where = _read_hf_config(source)
    kind = str(data.get("image_processor_type") or data.get("feature_extractor_type") or "")
    siglip = "siglip" in kind.lower()

    if not data.get("do_resize", True):
        raise ValueError(f"{where}: do_resize=false is not supported")
    if not data.get("do_rescale", True):
        raise ValueError(f"{where}: do_rescale=false is not supported")
    rescale = float(data.get("rescale_factor", 1 / 255))
    if not math.isclose(rescale, 1 / 255, rel_tol=1e-6):
        raise ValueError(f"{where}: rescale_factor must be 1/255, got {rescale}")

    default_size = {"height": 224, "width": 224} if siglip else {"shortest_edge": 224}
    size = _size_dict(data.get("size", default_size), where, "size")
    if set(size) == {"shortest_edge"}:
        image_size = size["shortest_edge"]
        if not data.get("do_center_crop", True):
            raise ValueError(
                f"{where}: a shortest_edge resize without center crop is not supported"
            )
        crop = _size_dict(data.get("crop_size", image_size), where, "crop_size")
        if crop != {"height": image_size, "width": image_size}:
            raise ValueError(
                f"{where}: crop_size {crop} must be a square of the resize size {image_size}"
            )
        resize_mode = "shortest"
    elif set(size) == {"height", "width"}:
        if size["height"] != size["width"]:
            raise ValueError(f"{where}: non-square size {size} is not supported")
        image_size = size["height"]
        if data.get("do_center_crop", False):
            crop = _size_dict(data.get("crop_size", image_size), where, "crop_size")
            if crop != {"height": image_size, "width": image_size}:
                raise ValueError(f"{where}: crop_size {crop} differs from size {size}")
        resize_mode = "squash"
    else:
        raise ValueError(f"{where}: unsupported size {size}")

    resample = data.get("resample", 3)
    if resample not in _HF_RESAMPLE_CODES:
        raise ValueError(
            f"{where}: resample {resample!r} is not supported (3 = bicubic, 2 = bilinear)"
        )

    if data.get("do_normalize", True):
        mean = data.get("image_mean", SIGLIP_MEAN if siglip else OPENAI_CLIP_MEAN)
        std = data.get("image_std", SIGLIP_STD if siglip else OPENAI_CLIP_STD)
        if isinstance(mean, (int, float)):
            mean = (mean,) * 3
        if isinstance(std, (int, float)):
            std = (std,) * 3
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{where}: image_mean and image_std need 3 values")

    return PreprocessConfig(
        image_size=image_size,
        resize_mode=resize_mode,
        interpolation=_HF_RESAMPLE_CODES[resample],
        mean=tuple(mean),
        std=tuple(std),
        crop_rounding=data.get(_CROP_ROUNDING_KEY, "floor"),
    )


def preprocess_config_to_hf(config: PreprocessConfig, model_type: str) -> dict[str, Any]:
    """Writes a `PreprocessConfig` as a Hugging Face `preprocessor_config.json` dict.

    transformers' `CLIPImageProcessor` (model_type "clip") or `SiglipImageProcessor` ("siglip")
    loaded from it, and `AutoImageProcessor`, resize, crop and normalize the same way. One
    detail transformers cannot express: it always floors the crop offset, so with
    `crop_rounding="round"` (the default, open_clip's) the crop can sit one pixel off from
    vlkit's on some image sizes. The setting is kept under an extra key that transformers
    ignores, so `preprocess_config_from_hf` reads back exactly `config`.

    Args:
        config: The preprocessing to write.
        model_type: "clip" or "siglip"; picks `image_processor_type`.

    Returns:
        A JSON-serialisable dict.
    """
    if model_type not in _HF_PROCESSOR_TYPES:
        raise ValueError(
            f"model_type must be one of {sorted(_HF_PROCESSOR_TYPES)}, got {model_type!r}"
        )
    s = config.image_size
    shortest = config.resize_mode == "shortest"
    codes = {name: code for code, name in _HF_RESAMPLE_CODES.items()}
    return {
        "image_processor_type": _HF_PROCESSOR_TYPES[model_type],
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": s} if shortest else {"height": s, "width": s},
        "resample": codes[config.interpolation],
        "do_center_crop": shortest,
        "crop_size": {"height": s, "width": s},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(config.mean),
        "image_std": list(config.std),
        _CROP_ROUNDING_KEY: config.crop_rounding,
    }
