"""Hugging Face causal LMs -> vlkit's `DecoderLM`: `LlamaForCausalLM` (SmolLM2, TinyLlama,
Llama 3 with its RoPE scaling), `Qwen2ForCausalLM`, `Qwen3ForCausalLM` and `MistralForCausalLM`.

All share Llama's layout and parameter names; they differ only in (transformers 5.25,
`models/{llama,qwen2,qwen3,mistral}/modeling_*.py`):
- Qwen2: biases on q/k/v (not o); an optional sliding window, off in released checkpoints.
- Qwen3: RMSNorm over each query and key head before RoPE (`q_norm`, `k_norm`); `head_dim` is
  its own config key (default 128), not `hidden_size // num_attention_heads`.
- Mistral: never a bias (`attention_bias` / `mlp_bias` are not read), an optional `head_dim`,
  `sliding_window` (default 4096 when the key is absent; null in v0.2 and later, and in
  llava-v1.6-mistral) and its own defaults for omitted keys (`MISTRAL_DEFAULTS`).
Sliding-window attention is refused (a Mistral window of at least `max_position_embeddings`
masks nothing and is accepted), as are RoPE types other than default / linear / dynamic / llama3
(`hf_llama.rope_from_hf`); both errors name config.json and the key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlkit.errors import CheckpointError
from vlkit.hub.hf_config_files import read_json_object
from vlkit.hub.hf_llama import config_from_hf_llama
from vlkit.hub.weights import (
    HF_WEIGHT_FILES,
    find_weights,
    load_into,
    read_weights,
    skip_weight_init,
    write_json,
    write_safetensors,
)
from vlkit.models.decoder import DecoderConfig, DecoderLM
from vlkit.models.decoder.llama import ACTIVATIONS

__all__ = [
    "CAUSAL_LM_ARCHITECTURES",
    "CAUSAL_LM_DEFAULTS",
    "CAUSAL_LM_MODEL_TYPES",
    "MISTRAL_DEFAULTS",
    "causal_lm_config",
    "causal_lm_config_to_hf",
    "causal_lm_model_type",
    "is_causal_lm_directory",
    "load_causal_lm",
    "save_causal_lm",
]

CAUSAL_LM_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
CAUSAL_LM_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "MistralForCausalLM": "mistral",
}
# MistralConfig's defaults where they differ from Llama's (configuration_mistral.py): a sparse
# `text_config` (llava-hf's llava-v1.6-mistral) relies on them, and an absent `sliding_window`
# means a 4096-token window.
MISTRAL_DEFAULTS: dict[str, Any] = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096 * 32,
    rms_norm_eps=1e-6, sliding_window=4096,
)  # fmt: skip
# Defaults of omitted config keys, per family, where they are not Llama's.
CAUSAL_LM_DEFAULTS: dict[str, dict[str, Any]] = {"mistral": MISTRAL_DEFAULTS}


def causal_lm_model_type(hf_config: Mapping[str, Any]) -> str | None:
    """The family of a supported config, "llama", "qwen2", "qwen3" or "mistral" (by
    `model_type`, else `architectures`), else None."""
    model_type = hf_config.get("model_type")
    if model_type in CAUSAL_LM_MODEL_TYPES:
        return model_type
    for name in hf_config.get("architectures") or ():
        if name in CAUSAL_LM_ARCHITECTURES:
            return CAUSAL_LM_ARCHITECTURES[name]
    return None


def is_causal_lm_directory(directory: str | Path) -> bool:
    """Whether `directory/config.json` describes a supported causal LM."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return False
    try:
        hf_config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(hf_config, dict) and causal_lm_model_type(hf_config) is not None


def causal_lm_config(hf_config: Mapping[str, Any], source: str = "config.json") -> DecoderConfig:
    """The `DecoderConfig` of a Llama / Qwen2 / Qwen3 / Mistral `config.json`.

    Raises:
        CheckpointError: An unsupported `model_type`, a sliding window, an unsupported RoPE
            type or a missing key (one line naming `source` and the key).
    """
    family = causal_lm_model_type(hf_config)
    if family is None:
        raise CheckpointError(
            f"{source}: model_type {hf_config.get('model_type')!r} is not a supported causal LM "
            f"(supported: {', '.join(CAUSAL_LM_MODEL_TYPES)})"
        )
    if family == "mistral":
        hf_config = {**MISTRAL_DEFAULTS, **hf_config}
    act = hf_config.get("hidden_act", "silu")
    if act not in ACTIVATIONS:
        raise CheckpointError(
            f"{source}: hidden_act {act!r} is not supported (supported: {', '.join(ACTIVATIONS)})"
        )
    overrides: dict[str, Any] = {}
    if family in ("qwen2", "qwen3"):
        layer_types = hf_config.get("layer_types") or ()
        if hf_config.get("use_sliding_window") or "sliding_attention" in layer_types:
            key = "use_sliding_window" if hf_config.get("use_sliding_window") else "layer_types"
            raise CheckpointError(
                f"{source}: {key} asks for sliding-window attention, which vlkit does not "
                "implement (set use_sliding_window to false)"
            )
    if family == "mistral":
        _check_mistral_window(hf_config, source)
        # MistralAttention / MistralMLP: bias=False whatever the config says.
        overrides.update(attention_bias=False, qkv_bias=False, mlp_bias=False)
    if family == "qwen2":
        overrides["qkv_bias"] = True  # Qwen2Attention: q/k/v biases always, o_proj none
        overrides["attention_bias"] = False
    if family == "qwen3":
        overrides["qk_norm"] = True
        overrides["head_dim"] = hf_config.get("head_dim") or 128  # Qwen3Config's default
    try:
        return config_from_hf_llama(hf_config, source, **overrides)
    except KeyError as error:
        raise CheckpointError(f"{source}: missing key {error.args[0]!r}") from error
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            str(error) if source in str(error) else f"{source}: {error}"
        ) from error


def _check_mistral_window(hf_config: Mapping[str, Any], source: str) -> None:
    """Refuse a `sliding_window` that can mask anything. transformers' window
    (`masking_utils.sliding_window_overlay`: `kv_idx > q_idx - sliding_window`, on positions in
    the padded sequence) lets each token see itself and the `sliding_window - 1` before it, so a
    window of at least `max_position_embeddings` masks nothing in any sequence up to the
    checkpoint's context length (the case accepted here); vlkit's decoder has no window."""
    window = hf_config.get("sliding_window")
    longest = hf_config.get("max_position_embeddings")
    if window is None or (isinstance(longest, int) and window >= longest):
        return
    raise CheckpointError(
        f"{source}: sliding_window {window} is below max_position_embeddings {longest}: "
        "vlkit does not implement sliding-window attention (supported: null, or at least "
        "max_position_embeddings)"
    )


def _special_ids(directory: Path, hf_config: Mapping[str, Any]) -> dict[str, Any]:
    """bos/eos/pad ids as transformers' `generate` reads them: `generation_config.json` first,
    then config.json."""
    generation: dict[str, Any] = {}
    if (directory / "generation_config.json").is_file():
        generation = read_json_object(directory / "generation_config.json")
    ids = {}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = generation.get(key, hf_config.get(key))
        ids[key] = value if value is None or isinstance(value, int) else list(value)
    return ids


def load_causal_lm(directory: str | Path) -> DecoderLM:
    """Load a Llama / Qwen2 / Qwen3 / Mistral causal-LM directory into a `DecoderLM` (float32,
    eval). The family is kept as `model.hf_model_type`, so that `save_pretrained` writes it back.

    Raises:
        CheckpointError: Unsupported config (see `causal_lm_config`), or weights with missing,
            unknown or mis-shaped keys.
    """
    directory = Path(directory)
    hf_config = read_json_object(directory / "config.json")
    config = causal_lm_config(hf_config, str(directory / "config.json"))
    for key, value in _special_ids(directory, hf_config).items():
        setattr(config, key, value)
    weights = find_weights(directory, HF_WEIGHT_FILES)
    state = {
        key: value
        for key, value in read_weights(weights).items()
        if not key.endswith("rotary_emb.inv_freq")
    }
    if config.tie_word_embeddings and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    with skip_weight_init():  # every weight comes from the file
        model = DecoderLM(config)
    load_into(model, state, str(weights))
    model.hf_model_type = causal_lm_model_type(hf_config)
    return model.eval()


def causal_lm_config_to_hf(config: DecoderConfig, model_type: str | None = None) -> dict[str, Any]:
    """The `config.json` of a `DecoderConfig` for transformers: Qwen3 when it has q/k norms,
    Qwen2 when it has q/k/v biases without an o_proj bias, Mistral (no sliding window) when
    `model_type` is "mistral" (the same network as a bias-free Llama), else Llama. The RoPE
    settings are written in both layouts (v5 `rope_parameters`, v4 `rope_theta` +
    `rope_scaling`).

    Raises:
        ValueError: The decoder has parts the asked or inferred family lacks (biases).
    """
    if model_type == "mistral":
        if config.qk_norm or config.qkv_bias or config.attention_bias or config.mlp_bias:
            raise ValueError("MistralForCausalLM has no biases or q/k norms; this decoder has some")
        model_type, architecture = "mistral", "MistralForCausalLM"
    elif config.qk_norm:
        model_type, architecture = "qwen3", "Qwen3ForCausalLM"
    elif config.qkv_bias and not config.attention_bias:
        model_type, architecture = "qwen2", "Qwen2ForCausalLM"
    else:
        model_type, architecture = "llama", "LlamaForCausalLM"
    if model_type != "llama" and config.mlp_bias:
        raise ValueError(f"{architecture} has no MLP biases; this decoder has mlp_bias=True")
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling:
        rope.update(config.rope_scaling)
    hf: dict[str, Any] = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": config.hidden_act,
        "rms_norm_eps": config.rms_norm_eps,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "rope_parameters": rope,
        "rope_theta": config.rope_theta,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }
    if config.rope_scaling:
        hf["rope_scaling"] = dict(config.rope_scaling)
    if model_type == "llama":
        hf["attention_bias"] = config.attention_bias
        hf["mlp_bias"] = config.mlp_bias
    elif model_type == "qwen3":
        hf["attention_bias"] = config.attention_bias
    elif model_type == "mistral":
        hf["sliding_window"] = None  # vlkit's decoder attends to the whole sequence
    return hf


def save_causal_lm(model: DecoderLM, directory: str | Path) -> None:
    """Write `model` as a transformers causal-LM directory (config.json, generation_config.json,
    model.safetensors) that `AutoModelForCausalLM` and `load_causal_lm` load unchanged."""
    if type(model) is not DecoderLM:  # Flamingo / CogVLM decoders carry layers Llama has not
        raise ValueError(f"only a plain DecoderLM saves as a causal LM, not {type(model).__name__}")
    directory = Path(directory)
    config = model.config
    hf = causal_lm_config_to_hf(config, getattr(model, "hf_model_type", None))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # shared with the embedding, as transformers saves it
    write_safetensors(state, directory / "model.safetensors", metadata={"format": "pt"})
    write_json(hf, directory / "config.json")
    generation = {
        key: getattr(config, key)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id")
        if getattr(config, key) is not None
    }
    write_json(generation, directory / "generation_config.json")


# `DecoderLM.save_pretrained` delegates here (the models cannot import the format layer).
DecoderLM.checkpoint_writer = save_causal_lm
