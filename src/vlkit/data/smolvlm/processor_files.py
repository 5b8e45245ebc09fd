"""Reading a Hugging Face SmolVLM processor directory: tokenizer, special tokens, image and video
settings, `image_seq_len` and chat template, with transformers' defaults and precedence."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from vlkit.data.smolvlm.image_processor import SmolVLMImageConfig, SmolVLMVideoConfig
from vlkit.data.tokenizers.base import token_content
from vlkit.errors import CheckpointError

__all__ = ["ProcessorFiles", "read_processor_directory"]

# Boolean image settings, defaulting (when absent) to SmolVLMImageProcessor's class attributes.
_IMAGE_FLAGS = ("do_resize", "do_image_splitting", "do_rescale", "do_normalize", "do_pad")


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


def read_processor_directory(directory: str | Path) -> ProcessorFiles:
    """Reads a Hugging Face SmolVLM processor directory.

    Needs `tokenizer.json`; `preprocessor_config.json` with `size.longest_edge`,
    `max_image_size.longest_edge`, `image_mean`, `image_std` (other image keys default as in
    transformers); `image_seq_len` in `processor_config.json` (or `preprocessor_config.json`).
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

    image_path = root / "preprocessor_config.json"
    if not image_path.is_file():
        raise CheckpointError(f"{root}: missing preprocessor_config.json (image settings)")
    image = _read_json(image_path)
    defaults = SmolVLMImageConfig(0, 0, (0.0,) * 3, (0.0,) * 3)
    image_config = SmolVLMImageConfig(
        longest_edge=int(_require(image, image_path, "size", "longest_edge")),
        tile_size=int(_require(image, image_path, "max_image_size", "longest_edge")),
        image_mean=tuple(_require(image, image_path, "image_mean")),
        image_std=tuple(_require(image, image_path, "image_std")),
        rescale_factor=float(image.get("rescale_factor", defaults.rescale_factor)),
        resample=int(image.get("resample", defaults.resample)),
        **{key: bool(image.get(key, getattr(defaults, key))) for key in _IMAGE_FLAGS},
    )

    processor_path = root / "processor_config.json"
    processor = _read_json(processor_path) if processor_path.is_file() else {}
    image_seq_len = processor.get("image_seq_len", image.get("image_seq_len"))
    if image_seq_len is None:
        raise CheckpointError(f"{processor_path}: missing key 'image_seq_len'")

    return ProcessorFiles(
        tokenizer=tokenizer,
        image_config=image_config,
        image_seq_len=int(image_seq_len),
        video_config=_video_config(root, image),
        chat_template=_chat_template(root, processor, tokenizer_config),
        special_tokens=special_tokens,
        padding_side=tokenizer_config.get("padding_side", "right"),
    )


def _video_config(root: Path, image: dict[str, Any]) -> SmolVLMVideoConfig | None:
    # SmolVLM2 keeps `video_sampling` in preprocessor_config.json; newer saves may add a
    # video_preprocessor_config.json, which wins (as transformers' AutoVideoProcessor).
    video_path = root / "video_preprocessor_config.json"
    video = _read_json(video_path) if video_path.is_file() else image
    sampling = video.get("video_sampling")
    if sampling is None:
        return None
    path = video_path if video is not image else root / "preprocessor_config.json"
    # SmolVLMVideoProcessor.__init__ overwrites `video_sampling.video_size` with `size` when
    # the config has both, so frames are first resized like images are; mirrored here.
    size = video.get("size", sampling.get("video_size"))
    return SmolVLMVideoConfig(
        longest_edge=int(_require({"size": size}, path, "size", "longest_edge")),
        max_frames=int(_require(sampling, path, "max_frames")),
        fps=float(_require(sampling, path, "fps")),
        do_sample_frames=bool(video.get("do_sample_frames", False)),
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
