"""Reading a Hugging Face SmolVLM processor directory: tokenizer, special tokens, image and video
settings, `image_seq_len` and chat template, with transformers' defaults and precedence."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from vlkit.data.smolvlm.image_processor import SmolVLMImageConfig, SmolVLMVideoConfig
from vlkit.data.tokenizers.base import token_content
from vlkit.errors import CheckpointError

__all__ = ["ProcessorFiles", "image_config_from_dict", "read_processor_directory"]

# Boolean image settings, defaulting (when absent) to SmolVLMImageProcessor's class attributes.
_IMAGE_FLAGS = (
    "do_resize", "do_image_splitting", "do_rescale", "do_normalize", "do_pad", "do_convert_rgb",
)  # fmt: skip


@dataclass
class ProcessorFiles:
    """What a processor directory holds (the arguments of `SmolVLMProcessor`)."""

    tokenizer: Tokenizer
    image_config: SmolVLMImageConfig
    image_seq_len: int
    video_config: SmolVLMVideoConfig | None
    chat_template: str | None
    special_tokens: dict[str, str]
    padding_side: str
    truncation_side: str = "right"
    model_max_length: int | None = None


def read_processor_directory(directory: str | Path) -> ProcessorFiles:
    """Reads a Hugging Face SmolVLM processor directory.

    Needs `tokenizer.json`; image settings with `size.longest_edge`, `max_image_size.longest_edge`,
    `image_mean`, `image_std` (other image keys default as in transformers), nested under
    `image_processor` in `processor_config.json` (as transformers >= 5 saves) or in
    `preprocessor_config.json` (older saves); `image_seq_len` in `processor_config.json` (or
    `preprocessor_config.json`).
    Special tokens come from `tokenizer_config.json` / `special_tokens_map.json`; the chat
    template from `chat_template.jinja`, `chat_template.json` or `tokenizer_config.json`.

    Args:
        directory: The processor (or model) directory.

    Returns:
        The parsed files.

    Raises:
        CheckpointError: A file or key is missing, naming which.
    """
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory")
    tokenizer_path = root / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise CheckpointError(f"{root}: missing tokenizer.json (SmolVLM needs a fast tokenizer)")
    tokenizer = Tokenizer.from_file(str(tokenizer_path))

    tokenizer_config: dict[str, Any] = {}
    special_tokens: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (root / name).is_file():
            config = _read_json(root / name)
            tokenizer_config.update(config if name == "tokenizer_config.json" else {})
            for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
                content = token_content(config.get(key))
                if content is not None:
                    special_tokens[key] = content

    processor_path = root / "processor_config.json"
    processor = _read_json(processor_path) if processor_path.is_file() else {}
    image, image_path = _image_settings(root, processor)
    image_config = image_config_from_dict(image, image_path)
    image_seq_len = processor.get("image_seq_len", image.get("image_seq_len"))
    if image_seq_len is None:
        raise CheckpointError(f"{processor_path}: missing key 'image_seq_len'")

    return ProcessorFiles(
        tokenizer=tokenizer,
        image_config=image_config,
        image_seq_len=int(image_seq_len),
        video_config=_video_config(root, processor, image, image_path),
        chat_template=_chat_template(root, processor, tokenizer_config),
        special_tokens=special_tokens,
        padding_side=tokenizer_config.get("padding_side", "right"),
        truncation_side=tokenizer_config.get("truncation_side", "right"),
        model_max_length=_model_max_length(tokenizer_config),
    )


def _model_max_length(tokenizer_config: dict[str, Any]) -> int | None:
    # transformers treats a missing or huge (VERY_LARGE_INTEGER) value as "no limit".
    value = tokenizer_config.get("model_max_length")
    return int(value) if isinstance(value, int | float) and value < 1e20 else None


def _image_settings(root: Path, processor: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """The image processor's settings and where they were read, in transformers' order: nested
    under `image_processor` in `processor_config.json` (transformers >= 5 saves so), else
    `preprocessor_config.json`."""
    processor_path = root / "processor_config.json"
    if isinstance(processor.get("image_processor"), dict):
        return processor["image_processor"], processor_path
    image_path = root / "preprocessor_config.json"
    if not image_path.is_file():
        raise CheckpointError(
            f"{root}: no image settings: missing preprocessor_config.json, and "
            "processor_config.json has no 'image_processor' entry"
        )
    return _read_json(image_path), image_path


def image_config_from_dict(
    image: dict[str, Any], path: Path, defaults: SmolVLMImageConfig | None = None
) -> SmolVLMImageConfig:
    """A `SmolVLMImageConfig` from image (or video) processor settings; absent keys default to
    `defaults`, else the `size`, `max_image_size`, `image_mean` and `image_std` keys are required.

    Raises:
        CheckpointError: A required key is missing, naming it and `path`.
    """

    def get(key: str, fallback: Any) -> Any:
        if key in image:
            return image[key]
        if defaults is None:
            _require(image, path, key)
        return fallback

    base = defaults or SmolVLMImageConfig(0, 0, (0.0,) * 3, (0.0,) * 3)
    size = get("size", None)
    config = replace(
        base,
        image_mean=tuple(get("image_mean", base.image_mean)),
        image_std=tuple(get("image_std", base.image_std)),
        rescale_factor=float(image.get("rescale_factor", base.rescale_factor)),
        resample=int(image.get("resample", base.resample)),
        **{key: bool(image.get(key, getattr(base, key))) for key in _IMAGE_FLAGS},
    )
    if size is not None:
        try:
            config = config.with_overrides(size=size)
        except ValueError as error:
            raise CheckpointError(f"{path}: missing key 'size.longest_edge' ({error})") from error
    tile = get("max_image_size", None)
    if tile is not None:
        config.tile_size = int(
            _require({"max_image_size": tile}, path, "max_image_size", "longest_edge")
        )
    return config


def _video_config(
    root: Path, processor: dict[str, Any], image: dict[str, Any], image_path: Path
) -> SmolVLMVideoConfig | None:
    """transformers' order: `video_processor` nested in `processor_config.json`, then
    `video_preprocessor_config.json`, then the image settings (SmolVLM2's original layout keeps
    `video_sampling` in `preprocessor_config.json`)."""
    if isinstance(processor.get("video_processor"), dict):
        video, path = processor["video_processor"], root / "processor_config.json"
    elif (root / "video_preprocessor_config.json").is_file():
        path = root / "video_preprocessor_config.json"
        video = _read_json(path)
    else:
        video, path = image, image_path
    sampling = video.get("video_sampling")
    if sampling is not None:
        # SmolVLMVideoProcessor.__init__ overwrites `video_sampling.video_size` with `size` when
        # the config has both, so frames are first resized like images are; mirrored here.
        size = video.get("size", sampling.get("video_size"))
        max_frames = _require(sampling, path, "max_frames")
        fps = _require(sampling, path, "fps")
    elif "num_frames" in video and "fps" in video:
        size, max_frames, fps = video.get("size"), video["num_frames"], video["fps"]
    else:
        return None
    # The video processor's own settings, with SmolVLMVideoProcessor's class defaults
    # (IMAGENET_STANDARD mean/std 0.5, LANCZOS, tiles of 364).
    frame_defaults = SmolVLMImageConfig(1456, 364, (0.5,) * 3, (0.5,) * 3)
    frame_config = image_config_from_dict(video, path, frame_defaults)
    return SmolVLMVideoConfig(
        longest_edge=int(_require({"size": size}, path, "size", "longest_edge")),
        max_frames=int(max_frames),
        fps=float(fps),
        do_sample_frames=bool(video.get("do_sample_frames", False)),
        frame_config=frame_config,
    )


def _chat_template(
    root: Path, processor: dict[str, Any], tokenizer_config: dict[str, Any]
) -> str | None:
    # transformers' precedence: chat_template.jinja, chat_template.json, then the configs.
    if (root / "chat_template.jinja").is_file():
        return (root / "chat_template.jinja").read_text()
    if (root / "chat_template.json").is_file():
        path = root / "chat_template.json"
        return _require(_read_json(path), path, "chat_template")
    return processor.get("chat_template") or tokenizer_config.get("chat_template")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from error


def _require(config: dict[str, Any], path: Path, *keys: str) -> Any:
    value: Any = config
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise CheckpointError(f"{path}: missing key {'.'.join(keys[: depth + 1])!r}")
        value = value[key]
    return value
