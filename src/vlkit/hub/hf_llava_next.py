"""Hugging Face LLaVA-NeXT checkpoints (`LlavaNextForConditionalGeneration`) <-> vlkit's
`AnyResLlavaVLM`, both ways.

A LLaVA-NeXT directory (model_type "llava_next": `llava-hf/llava-v1.6-*`, or what transformers'
`LlavaNextForConditionalGeneration.save_pretrained` + `LlavaNextProcessor.save_pretrained` write)
is a LLaVA one plus the anyres tiling: the same config keys and weights (`hf_llava_config`,
`hf_llava`), plus `image_grid_pinpoints` (the tile grids, (height, width) multiples of the tower's
input size) and the learned row terminator `image_newline` (D,) (in transformers 5's in-memory
names `model.image_newline`; transformers 5.25's conversion mapping "llava_next"). Each image's
tiles are stitched, unpadded and closed row by row as `vlkit.models.llava_next` does.

The processor files hold a `LlavaNextImageProcessor` (`image_grid_pinpoints`; its `do_pad` pads
the views of a batch to one count, which `AnyResProcessor` always does; the rest is a
`CLIPImageProcessor`'s keys and defaults, read by `hf_preprocess`) and a `LlavaNextProcessor`'s
`patch_size`, `vision_feature_select_strategy`, `num_additional_image_tokens` and `image_token`:
`read_llava_next_processor` returns the equivalent `AnyResProcessor`.

`save_llava_next` writes a directory transformers loads back (config.json, model.safetensors,
generation_config.json, and the processor files copied from the directory the model was loaded
from); a composed anyres llava (`compose_vlm(..., anyres=True)`) keeps vlkit's composed format.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from vlkit.data.anyres_processor import AnyResProcessor
from vlkit.data.anyres_tiling import LLAVA_NEXT_PINPOINTS
from vlkit.data.llava_processor import LlavaProcessor
from vlkit.data.tokenizers.base import token_content
from vlkit.data.transforms import ImageTransform
from vlkit.errors import CheckpointError
from vlkit.hub.composed_checkpoint import save_composed
from vlkit.hub.hf_config_files import config_model_type, generation_default, read_json_object
from vlkit.hub.hf_llava import llava_state_dict, to_hf_llava_state_dict
from vlkit.hub.hf_llava_config import build_llava, llava_config_to_hf, llava_tower
from vlkit.hub.hf_llava_processor import (
    read_image_processor_config,
    read_tokenizer_json,
    tokenizer_image_token,
    tokenizer_settings,
)
from vlkit.hub.hf_preprocess import preprocess_config_from_hf
from vlkit.hub.weights import (
    HF_WEIGHT_FILES,
    find_weights,
    load_into,
    read_weights,
    skip_weight_init,
    write_json,
    write_safetensors,
)
from vlkit.models.composition import converted_record, refresh_composition, set_trainable
from vlkit.models.llava_next import AnyResLlavaVLM, check_pinpoints

__all__ = [
    "LLAVA_NEXT_MODEL_TYPES",
    "build_llava_next",
    "check_llava_next_processor",
    "is_llava_next_directory",
    "load_llava_next",
    "read_llava_next_processor",
    "save_llava_next",
]

LLAVA_NEXT_MODEL_TYPES = ("llava_next",)
# transformers' LlavaNextConfig / LlavaNextImageProcessor default when the key is absent.
_DEFAULT_PINPOINTS = [list(pinpoint) for pinpoint in LLAVA_NEXT_PINPOINTS]
# The processor's files, copied by `save_llava_next` from the directory the model came from.
_PROCESSOR_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "processor_config.json", "preprocessor_config.json", "chat_template.jinja",
    "chat_template.json",
)  # fmt: skip


def is_llava_next_directory(directory: str | Path) -> bool:
    """Whether `directory` has a `config.json` with model_type "llava_next" (False when
    unreadable)."""
    return config_model_type(directory) in LLAVA_NEXT_MODEL_TYPES


def _pinpoints(value: Any, tile_size: int, key: str) -> list[list[int]]:
    """`value` checked as anyres grids of `tile_size` tiles, errors naming `key`."""
    try:
        return check_pinpoints(_DEFAULT_PINPOINTS if value is None else value, tile_size)
    except ValueError as error:
        default = " (transformers' default; the key is absent)" if value is None else ""
        raise CheckpointError(f"{key}{str(error).removeprefix('pinpoints')}{default}") from error


def build_llava_next(hf_config: dict[str, Any], source: str = "config.json") -> AnyResLlavaVLM:
    """An uninitialised `AnyResLlavaVLM` shaped like a LLaVA-NeXT `config.json` dict: the LLaVA
    parts of `hf_llava_config.build_llava` (which checks the towers, feature layers and
    projector) with `image_grid_pinpoints` tiling.

    Raises:
        CheckpointError: A value vlkit does not support, in one line naming the key.
    """
    if hf_config.get("model_type") not in LLAVA_NEXT_MODEL_TYPES:
        raise CheckpointError(
            f"{source}: model_type {hf_config.get('model_type')!r} is not llava_next"
        )
    llava = build_llava({**hf_config, "model_type": "llava"}, source)
    tower = llava_tower(llava)
    if int(tower.config.class_token) != int(llava.vision.drop_first):
        strategy = hf_config.get("vision_feature_select_strategy", "default")
        wanted = "default" if tower.config.class_token else "full"
        raise CheckpointError(
            f"{source}: vision_feature_select_strategy {strategy!r} is not supported for this "
            f"vision tower: LLaVA-NeXT stitches square patch grids, so exactly the tower's class "
            f"token is dropped ({wanted!r})"
        )
    pinpoints = _pinpoints(
        hf_config.get("image_grid_pinpoints"), tower.config.image_size,
        f"{source}: image_grid_pinpoints",
    )  # fmt: skip
    model = AnyResLlavaVLM(
        llava.vision, llava.connector, llava.decoder, llava.image_token_id, pinpoints,
        llava.config,
    )  # fmt: skip
    model.hf_config = hf_config
    return model


def load_llava_next(directory: str | Path) -> AnyResLlavaVLM:
    """Loads a transformers LLaVA-NeXT directory into an `AnyResLlavaVLM` (eval mode; weights
    only: the processor is `read_llava_next_processor`).

    Raises:
        CheckpointError: An unreadable or unsupported config.json (naming the key, e.g.
            `image_grid_pinpoints`), or weights that do not match it (naming the keys).
    """
    directory = Path(directory)
    config_path = directory / "config.json"
    hf_config = read_json_object(config_path)
    with skip_weight_init():  # every weight comes from the file
        model = build_llava_next(hf_config, str(config_path))
    weights = find_weights(directory, HF_WEIGHT_FILES)
    # LLaVA's names (`hf_llava`, every layout it reads) plus the row terminator, whose
    # transformers 5 in-memory name is `model.image_newline`.
    state = {
        ("image_newline" if key == "model.image_newline" else key): value
        for key, value in read_weights(weights).items()
    }
    # `hf_llava`'s LLaVA functions read only what an `AnyResLlavaVLM` shares with a `LlavaVLM`.
    state = llava_state_dict(state, model, str(weights))  # type: ignore[arg-type]
    load_into(model, state, str(weights))
    model.eos_token_id = generation_default(directory, hf_config, "eos_token_id")
    model.pad_token_id = generation_default(directory, hf_config, "pad_token_id")
    model.source_directory = str(directory)
    composition = hf_config.get("vlkit_composition")
    if isinstance(composition, dict):  # written by vlkit: its parts as saved
        model.composition = composition
        if isinstance(composition.get("trainable_parts"), list):
            set_trainable(model, "llava", composition["trainable_parts"])
    else:  # a transformers checkpoint: converted, every part from this directory
        model.composition = converted_record(
            model, "llava", str(directory), "LlavaNextForConditionalGeneration"
        )
    return model.eval()


def save_llava_next(model: AnyResLlavaVLM, directory: str | Path) -> None:
    """Writes a model loaded by `load_llava_next` as a transformers LLaVA-NeXT directory:
    config.json (its own, with what vlkit models refreshed), model.safetensors,
    generation_config.json, and the processor files of the directory it was loaded from.
    A composed anyres llava (no transformers config) is written in vlkit's composed format.

    Raises:
        CheckpointError: The model has no transformers equivalent (`llava_config_to_hf`).
    """
    base = getattr(model, "hf_config", None)
    if base is None:  # `compose_vlm(..., anyres=True)`: vlkit's composed format, as before
        save_composed(model, directory)
        return
    directory = Path(directory)
    config = {
        **llava_config_to_hf(model),  # type: ignore[arg-type]
        "architectures": ["LlavaNextForConditionalGeneration"],
        "model_type": "llava_next",
        "image_grid_pinpoints": [list(pinpoint) for pinpoint in model.pinpoints],
    }
    # transformers' image_seq_length is LLaVA's fixed count, unused by LLaVA-NeXT: keep the file's.
    config.pop("image_seq_length")
    if "image_seq_length" in base:
        config["image_seq_length"] = base["image_seq_length"]
    if getattr(model, "composition", None) is not None:
        config["vlkit_composition"] = refresh_composition(model, "llava")
    directory.mkdir(parents=True, exist_ok=True)
    state = to_hf_llava_state_dict(model)  # type: ignore[arg-type]
    write_safetensors(state, directory / "model.safetensors", metadata={"format": "pt"})
    write_json(config, directory / "config.json")
    generation = {
        key: value
        for key in ("eos_token_id", "pad_token_id")
        if (value := getattr(model, key, None)) is not None
    }
    if generation:
        write_json(generation, directory / "generation_config.json")
    source = getattr(model, "source_directory", None)
    if source and Path(source).resolve() != directory.resolve():
        for name in _PROCESSOR_FILES:
            if (Path(source) / name).is_file():
                shutil.copyfile(Path(source) / name, directory / name)


def _json(path: Path) -> dict[str, Any]:
    return read_json_object(path) if path.is_file() else {}


def _anyres_transform(image: dict[str, Any], source: Path) -> tuple[ImageTransform, list]:
    """The tile transform and the pinpoints of a `LlavaNextImageProcessor` config."""
    kind = str(image.get("image_processor_type", "LlavaNextImageProcessor"))
    if not kind.startswith("LlavaNextImageProcessor"):
        raise CheckpointError(
            f"{source}: image_processor_type {kind!r} is not a LlavaNextImageProcessor"
        )
    # Without the anyres keys it is a CLIPImageProcessor config with the same defaults (size
    # shortest_edge 224, crop 224, bicubic, OpenAI CLIP statistics). `do_pad` pads a batch's
    # views to one count (zero views), which `AnyResProcessor` always does.
    anyres_keys = ("image_grid_pinpoints", "do_pad", "image_processor_type")
    plain = {key: value for key, value in image.items() if key not in anyres_keys}
    plain["image_processor_type"] = "CLIPImageProcessor"
    try:
        preprocess = preprocess_config_from_hf(plain)
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from error
    height, width = preprocess.output_size
    if height != width or preprocess.resize_size is not None:
        # transformers resizes the global view to `size`, vlkit to the tile (crop) size.
        raise CheckpointError(
            f"{source}: size {image.get('size')!r} and crop_size {image.get('crop_size')!r}: "
            "anyres tiles need one square side for both"
        )
    pinpoints = _pinpoints(
        image.get("image_grid_pinpoints"), height, f"{source}: image_grid_pinpoints"
    )
    return ImageTransform(preprocess), pinpoints


def read_llava_next_processor(directory: str | Path) -> AnyResProcessor:
    """The `AnyResProcessor` of a transformers LLaVA-NeXT directory: the same `input_ids`,
    `attention_mask`, `pixel_values` and `image_sizes` as its `LlavaNextProcessor`.

    Without `processor_config.json` (older exports) the patch size and selection strategy come
    from config.json, and the additional token is counted for a CLIP tower (its CLS).

    Raises:
        CheckpointError: A missing tokenizer.json / image processor config, invalid JSON,
            preprocessing vlkit does not implement, or placeholder counts that differ from the
            model's, in one line naming the file and key.
    """
    root = Path(directory)
    processor = _json(root / "processor_config.json")
    image, image_source = read_image_processor_config(root, processor)
    transform, pinpoints = _anyres_transform(image, image_source)
    tokenizer = read_tokenizer_json(root)
    model = _json(root / "config.json")
    vision = model.get("vision_config") or {}
    where = root / "processor_config.json"
    if processor:
        patch_size = processor.get("patch_size")
        strategy = processor.get("vision_feature_select_strategy")
        extra = processor.get("num_additional_image_tokens", 0)
    else:
        patch_size = vision.get("patch_size")
        strategy = model.get("vision_feature_select_strategy", "default")
        extra = int(vision.get("model_type", "clip_vision_model") == "clip_vision_model")
    if patch_size is None:
        raise CheckpointError(f"{where}: missing key 'patch_size'")
    # transformers counts an image's placeholders as the packed features plus
    # num_additional_image_tokens, minus one for "default": the model's count only when the two
    # cancel (its model drops the class token it added; otherwise it fails on a mismatch).
    if extra != int(strategy == "default"):
        raise CheckpointError(
            f"{where}: num_additional_image_tokens {extra} with vision_feature_select_strategy "
            f"{strategy!r} gives {extra - int(strategy == 'default'):+d} placeholders per image "
            "beyond the model's features; use 1 with 'default' (a CLIP tower's class token), "
            "0 with 'full'"
        )
    tokenizer_config = _json(root / "tokenizer_config.json")
    image_token = (
        tokenizer_image_token(tokenizer_config)
        or token_content(tokenizer_config.get("image_token"))
        or processor.get("image_token")
        or "<image>"
    )  # transformers: the tokenizer's image token wins
    try:
        result = LlavaProcessor(
            tokenizer, transform, int(patch_size), strategy or "full", int(extra), image_token,
            **tokenizer_settings(root, tokenizer_config, processor),
        )  # fmt: skip
    except ValueError as error:
        raise CheckpointError(f"{root}: {error}") from error
    result.tokenizer_config = tokenizer_config
    return AnyResProcessor.from_llava(result, pinpoints)


def check_llava_next_processor(
    model: AnyResLlavaVLM, processor: AnyResProcessor, directory: str | Path
) -> None:
    """Refuses a processor whose tiles or placeholder counts are not the model's.

    Raises:
        CheckpointError: Different pinpoints, tile size or patch size, naming the key.
    """
    tower = llava_tower(model)  # type: ignore[arg-type]
    checks = (
        ("image_grid_pinpoints", [tuple(p) for p in processor.pinpoints], model.pinpoints),
        ("crop_size", processor.tile_size, model.tile_size),
        ("patch_size", processor.patch_size, tower.config.patch_size),
    )
    for key, ours, models in checks:
        if ours != models:
            raise CheckpointError(
                f"{directory}: the processor's {key} {ours} differs from the model's {models} "
                "(config.json)"
            )


# `AnyResLlavaVLM.save_pretrained` delegates here: models cannot import the format layer.
AnyResLlavaVLM.checkpoint_writer = save_llava_next  # type: ignore[assignment]
