"""Hugging Face LLaVA checkpoints (`LlavaForConditionalGeneration`) <-> vlkit's `LlavaVLM`, both ways.

Layout, as transformers 5.25's `save_pretrained` writes it (models/llava/modeling_llava.py
and its checkpoint conversion mapping): `vision_tower.*` (a `CLIPVisionModel` /
`SiglipVisionModel`'s transformer, converted by `hf_clip`'s rules: q/k/v fused on load, split on
save), `multi_modal_projector.linear_1/linear_2` (an MLP with `projector_hidden_act`, biases
when `multimodal_projector_bias`), `language_model.model.*` (a Llama / Qwen2 / Qwen3 `*Model`,
names as vlkit's `DecoderLM`) and `language_model.lm_head.weight` (absent when tied). Its
in-memory names (`model.vision_tower.*`, `model.language_model.*`, `lm_head.weight`) and the
hub's transformers 4 files (`vision_tower.vision_model.*`) are renamed to it first.

The config.json side (which hidden states, which towers) is `hf_llava_config`.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from tokenizers import Tokenizer

from vlkit.data.llava_processor import LlavaProcessor
from vlkit.data.transforms import ImageTransform
from vlkit.errors import CheckpointError
from vlkit.hub.composed_checkpoint import save_composed
from vlkit.hub.hf_clip import to_hf_state_dict
from vlkit.hub.hf_config_files import generation_default, read_json_object
from vlkit.hub.hf_llava_config import build_llava, llava_config_to_hf, llava_tower, vision_family
from vlkit.hub.hf_llava_processor import read_llava_processor, save_llava_processor
from vlkit.hub.weights import (
    HF_WEIGHT_FILES,
    find_weights,
    load_into,
    read_weights,
    skip_weight_init,
    state_dict_problems,
    write_json,
    write_safetensors,
)
from vlkit.models.composition import converted_record, refresh_composition, set_trainable
from vlkit.models.llava import LlavaVLM

__all__ = [
    "llava_processor_for_model",
    "llava_state_dict",
    "load_llava",
    "save_llava",
    "to_hf_llava_state_dict",
]

# Other layouts -> the one transformers 5.25's `save_pretrained` writes (first match wins): its
# in-memory names (`model.*`, `lm_head.*`) and the hub's transformers 4 files (the vision tower
# under `vision_model.`).
_LAYOUTS = (
    ("model.vision_tower.vision_model.", "vision_tower."),
    ("vision_tower.vision_model.", "vision_tower."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)
_IGNORED_SUFFIXES = (".position_ids", "rotary_emb.inv_freq")


def _hf_pairs(model: LlavaVLM) -> list[tuple[str, list[str]]]:
    """Each vlkit parameter name with its transformers name(s) (three for a fused q/k/v)."""
    tower = llava_tower(model)
    # hf_clip's renaming reads only `model_type` from the config.
    family = SimpleNamespace(model_type=vision_family(tower))
    pairs = []
    for key, value in model.state_dict().items():
        if key.startswith("vision.tower."):
            vision_key = "vision." + key[len("vision.tower.") :]
            hf = to_hf_state_dict({vision_key: value}, family)  # type: ignore[arg-type]
            names = ["vision_tower." + name.removeprefix("vision_model.") for name in hf]
        elif key.startswith("connector.proj."):
            index, _, name = key[len("connector.proj.") :].partition(".")
            names = [f"multi_modal_projector.linear_{1 if index == '0' else 2}.{name}"]
        elif key.startswith("decoder.model."):
            names = ["language_model.model." + key[len("decoder.model.") :]]
        elif key == "decoder.lm_head.weight":
            tied = model.decoder.config.tie_word_embeddings
            names = [] if tied else ["language_model.lm_head.weight"]
        else:
            names = [key]
        pairs.append((key, names))
    return pairs


def to_hf_llava_state_dict(model: LlavaVLM) -> dict[str, torch.Tensor]:
    """The model's weights under `LlavaForConditionalGeneration` names (q/k/v split)."""
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, names in _hf_pairs(model):
        parts = state[key].chunk(len(names), dim=0) if len(names) > 1 else [state[key]]
        out.update(zip(names, parts, strict=False))
    return out


def llava_state_dict(
    hf_state: dict[str, torch.Tensor], model: LlavaVLM, source: str
) -> dict[str, torch.Tensor]:
    """A transformers 4 or 5 LLaVA state dict -> `model`'s names, checked key by key.

    Raises:
        CheckpointError: Missing, unexpected or mis-shaped keys (transformers names), naming
            `source`.
    """
    present: dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        for old, new in _LAYOUTS:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        present[key] = value
    if model.decoder.config.tie_word_embeddings:
        present.pop("language_model.lm_head.weight", None)  # some files keep the tied copy
    problems = state_dict_problems(to_hf_llava_state_dict(model), present, "config")
    if problems:
        raise CheckpointError(f"{source} does not match its config: " + "; ".join(problems))
    state = {}
    for key, names in _hf_pairs(model):
        if names:
            state[key] = torch.cat([present[name] for name in names], dim=0)
    if model.decoder.config.tie_word_embeddings:
        state["decoder.lm_head.weight"] = state["decoder.model.embed_tokens.weight"]
    return state


def load_llava(directory: str | Path) -> LlavaVLM:
    """Loads a transformers LLaVA directory into a `LlavaVLM` (eval mode; weights only).

    Raises:
        CheckpointError: An unreadable or unsupported config.json (naming the key, e.g.
            `vision_config.model_type`), or weights that do not match it.
    """
    directory = Path(directory)
    config_path = directory / "config.json"
    hf_config = read_json_object(config_path)
    with skip_weight_init():  # every weight comes from the file
        model = build_llava(hf_config, str(config_path))
    weights = find_weights(directory, HF_WEIGHT_FILES)
    load_into(model, llava_state_dict(read_weights(weights), model, str(weights)), str(weights))
    model.eos_token_id = generation_default(directory, hf_config, "eos_token_id")
    model.pad_token_id = generation_default(directory, hf_config, "pad_token_id")
    model.source_directory = str(directory)
    composition = hf_config.get("vlkit_composition")
    if isinstance(composition, dict):  # written by vlkit: its parts as saved
        model.composition, model.compose_spec = composition, {"kind": "llava"}
        if isinstance(composition.get("trainable_parts"), list):
            set_trainable(model, "llava", composition["trainable_parts"])
    else:  # a transformers checkpoint: converted, every part from this directory
        model.composition = converted_record(
            model, "llava", str(directory), "LlavaForConditionalGeneration"
        )
    return model.eval()


def save_llava(model: LlavaVLM, directory: str | Path, processor: Any = None) -> None:
    """Writes `model` as a transformers LLaVA directory: config.json, model.safetensors,
    generation_config.json, and the processor's files (tokenizer, chat template, image
    processor) when `processor` is given or the model was loaded from a directory that has them.

    Raises:
        CheckpointError: The model has no transformers equivalent (`llava_config_to_hf`).
    """
    spec = getattr(model, "compose_spec", None) or {}
    if spec.get("vision", {}).get("tower", {}).get("type") == "resnet":
        save_composed(model, directory)  # transformers' LLaVA has no ResNet tower: vlkit's format
        return
    directory = Path(directory)
    config = llava_config_to_hf(model)
    if getattr(model, "composition", None) is not None:  # composed or converted: its parts
        config["vlkit_composition"] = refresh_composition(model, "llava")
    directory.mkdir(parents=True, exist_ok=True)
    state = to_hf_llava_state_dict(model)
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
    if processor is None:  # a composed model (`vlkit.compose_vlm`) carries its processor
        processor = getattr(model, "processor", None)
    if processor is None and source and (Path(source) / "tokenizer.json").is_file():
        processor = read_llava_processor(source)
    if processor is not None:
        save_llava_processor(processor, directory, vision_family(llava_tower(model)))


def llava_processor_for_model(
    model: LlavaVLM,
    tokenizer: Tokenizer,
    transform: ImageTransform,
    special_tokens: dict[str, str] | None = None,
    chat_template: str | None = None,
    image_token: str = "<image>",
) -> LlavaProcessor:
    """The `LlavaProcessor` of a vlkit-built LLaVA (e.g. a `vlkit train-vlm` llava run on a ViT's
    "hidden:-2" tokens), so that `save_pretrained(dir, processor=...)` writes a directory
    transformers' `AutoProcessor` loads: the patch size, the extra CLS token and the selection
    strategy come from the model's vision module.

    Args:
        model: The model.
        tokenizer: Its `tokenizers.Tokenizer` (a `WordTokenizer`'s `backend`, an LM's
            tokenizer.json), holding `image_token` at `model.image_token_id`.
        transform: The image tower's eval transform (`vlkit.get_transform(clip)`).
        special_tokens: `bos_token`, `eos_token`, `pad_token`, `unk_token` strings.
        chat_template: A Jinja chat template, or None.
        image_token: The placeholder string.

    Raises:
        CheckpointError: `image_token` is not the model's image token id.
    """
    tower = llava_tower(model)
    if tokenizer.token_to_id(image_token) != model.image_token_id:
        raise CheckpointError(
            f"the tokenizer's {image_token!r} is id {tokenizer.token_to_id(image_token)}, "
            f"the model's image_token_id is {model.image_token_id}"
        )
    drop_first = bool(getattr(model.vision, "drop_first", False))
    return LlavaProcessor(
        tokenizer, transform, tower.config.patch_size, "default" if drop_first else "full",
        int(tower.config.class_token), image_token, chat_template, special_tokens,
    )  # fmt: skip


# `LlavaVLM.save_pretrained` delegates here: models cannot import the format layer.
LlavaVLM.checkpoint_writer = save_llava
