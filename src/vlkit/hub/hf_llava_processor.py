"""The files of a transformers `LlavaProcessor` directory <-> vlkit's `LlavaProcessor`.

A LLaVA processor directory holds `tokenizer.json` + `tokenizer_config.json` (the tokenizer),
`processor_config.json` (`patch_size`, `vision_feature_select_strategy`,
`num_additional_image_tokens`, `image_token`, and in transformers 5 the `image_processor`: a
`CLIPImageProcessor` / `SiglipImageProcessor`, read by `hf_preprocess`; older directories keep
it in `preprocessor_config.json`) and the chat template (`vlkit.data.chat_template`, with
transformers' precedence).
`save_llava_processor` writes the same files, which transformers' `AutoProcessor` loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from vlkit.data.chat_template import read_chat_template, select_chat_template
from vlkit.data.llava_processor import LlavaProcessor
from vlkit.data.tokenizers.base import token_content
from vlkit.data.transforms import ImageTransform
from vlkit.errors import CheckpointError
from vlkit.hub.hf_config_files import read_json_object
from vlkit.hub.hf_preprocess import preprocess_config_from_hf, preprocess_config_to_hf
from vlkit.hub.weights import write_json

__all__ = [
    "read_image_processor_config",
    "read_llava_processor",
    "read_tokenizer_json",
    "save_llava_processor",
    "tokenizer_image_token",
    "tokenizer_settings",
]

_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token")
_TOO_LONG = 1e29  # transformers' "no limit" model_max_length is int(1e30)


def _read_json(path: Path, required: bool = False) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path.parent}: no {path.name} in this directory")
        return {}
    return read_json_object(path)


def _chat_template(root: Path, processor: dict[str, Any]) -> str | None:
    """The default chat template: `vlkit.data.chat_template` (chat_template.jinja, the
    tokenizer's, chat_template.json), else the `chat_template` key of processor_config.json."""
    try:
        templates = read_chat_template(root) or processor.get("chat_template")
        return select_chat_template(templates, source=str(root)) if templates else None
    except ValueError as error:
        raise CheckpointError(f"{root}: {error}") from error


def tokenizer_image_token(tokenizer_config: dict[str, Any]) -> str | None:
    """The tokenizer's `image_token` (transformers 5: in `extra_special_tokens`), else None."""
    extra = tokenizer_config.get("extra_special_tokens")
    return token_content(extra.get("image_token")) if isinstance(extra, dict) else None


def read_tokenizer_json(root: Path) -> Tokenizer:
    """The directory's tokenizer.json (a one-line CheckpointError when missing or unreadable)."""
    if not (root / "tokenizer.json").is_file():
        raise CheckpointError(f"{root}: no tokenizer.json in this directory")
    try:
        return Tokenizer.from_file(str(root / "tokenizer.json"))
    except Exception as error:  # tokenizers raises a bare Exception on parse errors
        raise CheckpointError(f"{root / 'tokenizer.json'}: cannot load ({error})") from error


def read_image_processor_config(root: Path, processor: dict[str, Any]) -> tuple[dict, Path]:
    """(the image processor's settings, the file they came from): transformers 5 nests them in
    processor_config.json (`processor`), older directories have preprocessor_config.json."""
    image = processor.get("image_processor")
    if isinstance(image, dict):
        return image, root / "processor_config.json"
    source = root / "preprocessor_config.json"
    return _read_json(source, required=True), source


def tokenizer_settings(
    root: Path, tokenizer_config: dict[str, Any], processor: dict[str, Any]
) -> dict[str, Any]:
    """`LlavaProcessor`'s text keyword arguments from the directory: chat template, special
    tokens, padding and truncation sides, maximum length."""
    special = {key: token_content(tokenizer_config.get(key)) for key in _SPECIAL}
    max_length = tokenizer_config.get("model_max_length")
    return {
        "chat_template": _chat_template(root, processor),
        "special_tokens": {key: value for key, value in special.items() if value is not None},
        "padding_side": tokenizer_config.get("padding_side", "right"),
        "truncation_side": tokenizer_config.get("truncation_side", "right"),
        "model_max_length": (
            int(max_length) if max_length is not None and max_length < _TOO_LONG else None
        ),
    }


def read_llava_processor(directory: str | Path) -> LlavaProcessor:
    """The `LlavaProcessor` of a transformers LLaVA directory.

    Without `processor_config.json` (older exports) the patch size and selection strategy
    come from config.json, and the additional token is counted for a CLIP tower (its CLS);
    transformers' `LlavaProcessor` then has no patch size and cannot expand `<image>`.

    Raises:
        CheckpointError: A missing tokenizer.json / preprocessor_config.json, invalid JSON, or
            preprocessing vlkit does not implement, naming the file and key.
    """
    root = Path(directory)
    tokenizer_config = _read_json(root / "tokenizer_config.json")
    processor = _read_json(root / "processor_config.json")
    tokenizer = read_tokenizer_json(root)
    image, image_source = read_image_processor_config(root, processor)
    try:
        transform = ImageTransform(preprocess_config_from_hf(image))
    except ValueError as error:
        raise CheckpointError(f"{image_source}: {error}") from error
    model = _read_json(root / "config.json")
    vision = model.get("vision_config") or {}
    patch_size = processor.get("patch_size", vision.get("patch_size") if not processor else None)
    if patch_size is None:
        raise CheckpointError(f"{root / 'processor_config.json'}: missing key 'patch_size'")
    default_extra = int(vision.get("model_type", "clip_vision_model") == "clip_vision_model")
    strategy = processor.get(
        "vision_feature_select_strategy", model.get("vision_feature_select_strategy", "default")
    )
    try:
        result = LlavaProcessor(
            tokenizer,
            transform,
            int(patch_size),
            strategy or "default",
            int(processor.get("num_additional_image_tokens", 0 if processor else default_extra)),
            # transformers: the tokenizer's `image_token` (extra_special_tokens) wins.
            tokenizer_image_token(tokenizer_config) or processor.get("image_token") or "<image>",
            **tokenizer_settings(root, tokenizer_config, processor),
        )
    except ValueError as error:
        raise CheckpointError(f"{root}: {error}") from error
    result.tokenizer_config = tokenizer_config
    return result


def save_llava_processor(processor: LlavaProcessor, directory: str | Path, family: str) -> None:
    """Writes the processor's files as transformers 5 does (tokenizer.json,
    tokenizer_config.json, processor_config.json with the image processor inside,
    chat_template.jinja), so that its `AutoProcessor` loads a `LlavaProcessor` giving the same
    outputs.

    Args:
        processor: The processor.
        directory: Where to write (created).
        family: "clip" or "siglip": the image processor class written.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    (root / "tokenizer.json").write_text(processor.tokenizer.to_str())
    tokenizer_config = dict(getattr(processor, "tokenizer_config", None) or {})
    tokenizer_config.pop("chat_template", None)  # written to chat_template.jinja below
    tokenizer_config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    tokenizer_config.update(processor.special_tokens)
    tokenizer_config["padding_side"] = processor.padding_side
    tokenizer_config["truncation_side"] = processor.truncation_side
    if processor.model_max_length is not None:
        tokenizer_config["model_max_length"] = processor.model_max_length
    write_json(tokenizer_config, root / "tokenizer_config.json")
    image = preprocess_config_to_hf(processor.transform.config, family)
    write_json(
        {
            "image_processor": image,
            "processor_class": "LlavaProcessor",
            "patch_size": processor.patch_size,
            "vision_feature_select_strategy": processor.vision_feature_select_strategy,
            "num_additional_image_tokens": processor.num_additional_image_tokens,
            "image_token": processor.image_token,
        },
        root / "processor_config.json",
    )
    if processor.chat_template is not None:
        (root / "chat_template.jinja").write_text(processor.chat_template)
