"""`from_pretrained` / `save_pretrained`: Hugging Face CLIP/SigLIP, open_clip, vlkit's own format.

`from_pretrained(name_or_path)` recognises:
- a Hugging Face directory (`config.json` with model_type clip or siglip + weights);
- a Llama / Qwen2 / Qwen3 causal-LM directory (`model_type` llama, qwen2 or qwen3, or
  `architectures` `*ForCausalLM`), loaded as a `vlkit.models.decoder.DecoderLM` by
  `vlkit.hub.hf_causal_lm.load_causal_lm`;
- a SmolVLM / SmolVLM2 / Idefics3 directory (`config.json` with model_type smolvlm or idefics3),
  loaded as a `vlkit.models.smolvlm.GenerativeVLM` by `vlkit.hub.hf_smolvlm.load_smolvlm`;
- a LLaVA directory (`config.json` with model_type llava), loaded as a
  `vlkit.models.llava.LlavaVLM` by `vlkit.hub.hf_llava.load_llava`;
- a LLaVA-NeXT directory (`config.json` with model_type llava_next), loaded as a
  `vlkit.models.llava_next.AnyResLlavaVLM` by `vlkit.hub.hf_llava_next.load_llava_next`;
- a BLIP-2 directory (`config.json` with model_type blip-2; OPT or Llama-family LM), loaded as a
  `vlkit.models.qformer_vlm.QFormerVLM` (or, for `Blip2ForImageTextRetrieval`, a
  `vlkit.hub.hf_blip2.Blip2Retrieval`) by `vlkit.hub.hf_blip2.load_blip2`;
- an OPT directory (`config.json` with model_type opt), loaded as a
  `vlkit.models.decoder.opt.OPTLM` by `vlkit.hub.hf_opt.load_opt`;
- an open_clip directory (`open_clip_config.json` + `open_clip_model.safetensors` or
  `open_clip_pytorch_model.bin`), or an open_clip weights file plus `open_clip_config=`;
- a composed VLM directory (`composed_vlm_config.json`, written by a `vlkit.compose_vlm` model's
  `save_pretrained`), loaded by `vlkit.hub.composed_checkpoint.load_composed`;
- a vlkit directory (`vlkit_config.json` + `model.safetensors`), e.g. a ResNet CLIP;
- a Hugging Face hub id (`openai/clip-vit-base-patch32`, `hf-hub:timm/ViT-B-16-SigLIP`,
  `ORG/NAME@REVISION`): only the files vlkit reads are downloaded, through `huggingface_hub`
  and its cache (`vlkit.hub.download`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlkit.errors import CheckpointError
from vlkit.hub.composed_checkpoint import is_composed_directory, load_composed
from vlkit.hub.download import download_checkpoint, parse_hub_id
from vlkit.hub.hf_blip2 import BLIP2_MODEL_TYPES, Blip2Retrieval, is_blip2_directory, load_blip2
from vlkit.hub.hf_causal_lm import (
    CAUSAL_LM_MODEL_TYPES,
    is_causal_lm_directory,
    load_causal_lm,
    save_causal_lm,
)
from vlkit.hub.hf_clip import (
    HF_CLIP_MODEL_TYPES,
    config_from_hf,
    config_to_hf,
    from_hf_state_dict,
    hf_format_problem,
    to_hf_state_dict,
)
from vlkit.hub.hf_config_files import config_model_type, read_json_object
from vlkit.hub.hf_llava import load_llava
from vlkit.hub.hf_llava_config import LLAVA_MODEL_TYPES, is_llava_directory
from vlkit.hub.hf_llava_next import (
    LLAVA_NEXT_MODEL_TYPES,
    is_llava_next_directory,
    load_llava_next,
)
from vlkit.hub.hf_opt import OPT_MODEL_TYPES, is_opt_directory, load_opt
from vlkit.hub.hf_preprocess import (
    HF_PREPROCESSOR_CONFIG,
    preprocess_config_from_hf,
    preprocess_config_to_hf,
)
from vlkit.hub.hf_smolvlm import SMOLVLM_MODEL_TYPES, is_smolvlm_directory, load_smolvlm
from vlkit.hub.open_clip import (
    OPEN_CLIP_WEIGHT_FILES,
    config_from_open_clip,
    from_open_clip_state_dict,
    read_open_clip_config,
)
from vlkit.hub.weights import (
    HF_WEIGHT_FILES,
    find_weights,
    load_into,
    read_weights,
    skip_weight_init,
    write_json,
    write_safetensors,
)
from vlkit.models.clip import CLIP, CLIPConfig, create_model
from vlkit.models.decoder import DecoderLM
from vlkit.models.decoder.opt import OPTLM
from vlkit.models.smolvlm import GenerativeVLM

VLKIT_CONFIG = "vlkit_config.json"

__all__ = [
    "VLKIT_CONFIG",
    "CheckpointError",
    "from_pretrained",
    "resolve_checkpoint",
    "save_pretrained",
]


def resolve_checkpoint(
    name_or_path: str | Path, revision: str | None = None, token: str | bool | None = None
) -> Path:
    """A local directory or file for `name_or_path`, downloading a hub id if it is not local
    (only the files vlkit reads: `vlkit.hub.download`).

    Args:
        name_or_path: A checkpoint directory or weights file, or a hub id (`ORG/NAME`,
            `hf-hub:ORG/NAME`, `ORG/NAME@REVISION`).
        revision: Branch, tag or commit of a hub id (default: `@REVISION`, else "main").
        token: Hub token for private or gated repositories (default: HF_TOKEN / stored login).

    Raises:
        CheckpointError: No such local path and no hub repository could be used (one line).
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    if parse_hub_id(name) is None:
        raise CheckpointError(f"no such checkpoint file or directory: {name}")
    return download_checkpoint(name, revision=revision, token=token)


def from_pretrained(
    name_or_path: str | Path,
    open_clip_config: str | Path | dict[str, Any] | None = None,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
) -> CLIP | GenerativeVLM | DecoderLM | OPTLM | Blip2Retrieval:
    """Loads a CLIP / SigLIP checkpoint, a causal LM, or a SmolVLM / Idefics3 generative VLM (see the module
    docstring for the formats; `revision` and `token` apply to hub ids, see
    `resolve_checkpoint`)."""
    path = resolve_checkpoint(name_or_path, revision=revision, token=token)
    if path.is_file():
        if open_clip_config is None:
            raise CheckpointError(
                f"{path} is a weights file: pass open_clip_config= (the open_clip model config "
                "JSON) or a checkpoint directory"
            )
        source = "open_clip_config" if isinstance(open_clip_config, dict) else open_clip_config
        return _load_open_clip(path, *read_open_clip_config(open_clip_config), source)
    if (path / "open_clip_config.json").is_file():
        weights = find_weights(path, OPEN_CLIP_WEIGHT_FILES)
        config_file = path / "open_clip_config.json"
        return _load_open_clip(weights, *read_open_clip_config(config_file), config_file)
    if is_composed_directory(path):  # a `vlkit.compose_vlm` model (all kinds but a ViT llava)
        return load_composed(path)
    if (path / VLKIT_CONFIG).is_file():
        with skip_weight_init():  # every weight comes from the file
            model = create_model(CLIPConfig.from_json(path / VLKIT_CONFIG))
        load_into(model, read_weights(find_weights(path, ["model.safetensors"])), str(path))
        return model.eval()
    if (path / "config.json").is_file():
        for _, _, accepts, load in _HF_FORMATS:
            if accepts(path):
                return load(path)
        config_path = path / "config.json"
        model_type = read_json_object(config_path).get("model_type")
        supported = ", ".join(f"{name} ({', '.join(types)})" for name, types, _, _ in _HF_FORMATS)
        raise CheckpointError(
            f"{config_path}: unsupported model_type {model_type!r} (supported: {supported})"
        )
    raise CheckpointError(
        f"{path} is not a checkpoint directory: expected config.json (Hugging Face), "
        f"open_clip_config.json (open_clip) or {VLKIT_CONFIG} (vlkit)"
    )


def _is_hf_clip_directory(directory: Path) -> bool:
    return config_model_type(directory) in HF_CLIP_MODEL_TYPES


def _naming(file: Path | str, error: Exception) -> CheckpointError:
    """`error` as a CheckpointError that names `file` once (the readers' own messages may name
    it already): a config value that passed the readers but fails while the model is built."""
    message = str(error)
    return CheckpointError(message if str(file) in message else f"{file}: {message}")


def _load_hf(path: Path) -> CLIP:
    hf_config = read_json_object(path / "config.json")
    config = config_from_hf(hf_config, str(path / "config.json"))
    if (path / HF_PREPROCESSOR_CONFIG).is_file():
        try:
            config.preprocess = preprocess_config_from_hf(path)
        except ValueError as error:
            raise _naming(path / HF_PREPROCESSOR_CONFIG, error) from error
    try:
        with skip_weight_init():  # every weight comes from the file
            model = create_model(config)
    except (ValueError, TypeError) as error:
        raise _naming(path / "config.json", error) from error
    weights = find_weights(path, HF_WEIGHT_FILES)
    state = from_hf_state_dict(read_weights(weights), model, str(weights))
    load_into(model, state, str(weights))
    return model.eval()


# The Hugging Face `config.json` formats, tried in order: (the family, the `model_type` values it
# loads, whether a directory is one, its loader). The unsupported-model_type error lists them
# all. A Llama-family LM is also recognised by its `architectures` (`*ForCausalLM`).
_HF_FORMATS: tuple[
    tuple[str, tuple[str, ...], Callable[[Path], bool], Callable[[Path], Any]], ...
] = (
    ("CLIP/SigLIP", HF_CLIP_MODEL_TYPES, _is_hf_clip_directory, _load_hf),
    ("SmolVLM/Idefics3", SMOLVLM_MODEL_TYPES, is_smolvlm_directory, load_smolvlm),
    ("LLaVA", LLAVA_MODEL_TYPES, is_llava_directory, load_llava),
    ("LLaVA-NeXT", LLAVA_NEXT_MODEL_TYPES, is_llava_next_directory, load_llava_next),
    ("BLIP-2", BLIP2_MODEL_TYPES, is_blip2_directory, load_blip2),
    ("OPT", OPT_MODEL_TYPES, is_opt_directory, load_opt),
    (
        "Llama/Qwen2/Qwen3/Mistral causal LM",
        CAUSAL_LM_MODEL_TYPES,
        is_causal_lm_directory,
        load_causal_lm,
    ),
)


def _load_open_clip(
    weights: Path, model_cfg: dict, preprocess_cfg: dict | None, source: str | Path
) -> CLIP:
    try:
        with skip_weight_init():  # every weight comes from the file
            model = create_model(config_from_open_clip(model_cfg, preprocess_cfg))
    except (ValueError, TypeError) as error:
        raise _naming(source, error) from error
    state = from_open_clip_state_dict(read_weights(weights), model.config)
    load_into(model, state, str(weights))
    return model.eval()


def save_pretrained(
    model: CLIP | DecoderLM | GenerativeVLM, directory: str | Path, format: str = "auto"
) -> None:
    """Writes `model` so that it loads back unchanged. A `DecoderLM` (causal LM) is written as
    a transformers Llama / Qwen2 / Qwen3 directory (`vlkit.hub.hf_causal_lm.save_causal_lm`), a
    generative VLM by its own `save_pretrained` (SmolVLM / Idefics3: `hf_smolvlm.save_smolvlm`).

    Args:
        format: "hf" writes a directory that transformers' `CLIPModel` / `SiglipModel` loads
            (config.json, model.safetensors, preprocessor_config.json); "vlkit" writes
            vlkit_config.json + model.safetensors (any vlkit model, e.g. a ResNet CLIP); "auto"
            picks "hf" when the architecture has a Hugging Face equivalent.
    """
    if format not in ("auto", "hf", "vlkit"):
        raise ValueError(f"format must be 'auto', 'hf' or 'vlkit', got {format!r}")
    directory = Path(directory)
    if isinstance(model, GenerativeVLM):  # SmolVLM / Idefics3, LLaVA, composed: their own writer
        model.save_pretrained(directory)
        return
    if isinstance(model, DecoderLM):  # a causal LM: transformers' Llama / Qwen2 / Qwen3 layout
        if format == "vlkit":
            raise ValueError("a causal LM is saved in the Hugging Face format only (format='hf')")
        save_causal_lm(model, directory)
        return
    config = model.config
    if format == "auto":
        format = "vlkit" if hf_format_problem(config) else "hf"
    state = model.state_dict()
    if format == "vlkit":
        write_safetensors(state, directory / "model.safetensors", metadata={"format": "pt"})
        write_json(config.to_dict(), directory / VLKIT_CONFIG)
        return
    write_safetensors(to_hf_state_dict(state, config), directory / "model.safetensors",
                      metadata={"format": "pt"})  # fmt: skip
    write_json(config_to_hf(config), directory / "config.json")
    write_json(
        preprocess_config_to_hf(config.preprocess, config.model_type),
        directory / "preprocessor_config.json",
    )


# `CLIP.save_pretrained` delegates to the function above: the models cannot import the format
# layer, so the format layer plugs its writer in.
CLIP.checkpoint_writer = save_pretrained
