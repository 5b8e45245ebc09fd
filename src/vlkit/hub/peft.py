"""LoRA adapters in peft's format, under transformers' parameter names, both ways.

A directory holds `adapter_config.json` (a `peft.LoraConfig`, written by peft itself) and
`adapter_model.safetensors` with keys `base_model.model.<transformers module>.lora_A.weight`,
`.lora_B.weight` (and `.lora_magnitude_vector` for DoRA), as `PeftModel.save_pretrained` writes
them (peft 0.21, `utils/save_and_load.py`: the adapter name is dropped from the keys). So
`peft.PeftModel.from_pretrained(transformers_model, directory)` loads what vlkit trained, and
`load_adapter` loads what transformers + peft trained.

The LoRA layers themselves are peft's (`peft.inject_adapter_in_model`, `peft.tuners.lora.Linear`:
its forward, rsLoRA scaling, DoRA and merge), injected into vlkit's modules under vlkit's names:
targets are matched against the transformers names (`peft_names`) with peft's own matching
(`check_target_module_exists`), then translated.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import peft
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils.other import get_pattern_key
from torch import nn

from vlkit.errors import CheckpointError
from vlkit.hub.hf_config_files import read_json_object
from vlkit.hub.peft_names import canonical_module_name, transformers_linear_names, unfuse
from vlkit.hub.weights import find_weights, read_weights, write_safetensors
from vlkit.overrides.parsing import ConfigError

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHT_FILES",
    "LoraAdapter",
    "inject_lora",
    "load_adapter",
    "lora_layers",
    "read_adapter_config",
    "save_adapter",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_PREFIX = "base_model.model."
_ADAPTER = "default"  # peft's adapter name; dropped from the saved keys
# adapter_config.json options vlkit does not implement, with the value that means "off".
_UNSUPPORTED = {
    "modules_to_save": None,
    "bias": "none",
    "lora_bias": False,
    "trainable_token_indices": None,
    "target_parameters": None,
    "layer_replication": None,
    "use_qalora": False,
    "alora_invocation_tokens": None,
    "fan_in_fan_out": False,
}


@dataclass
class LoraAdapter:
    """The LoRA adapter injected into a model (kept as `model.lora_adapter`).

    Attributes:
        config: The `peft.LoraConfig` as given, targets in transformers' naming.
        layout: Which naming the model has ("smolvlm", "llava", "causal_lm", or "vlkit").
        names: Each adapted vlkit module name -> its transformers module name.
    """

    config: peft.LoraConfig
    layout: str
    names: dict[str, str]


def _targeted(config: peft.LoraConfig, name: str) -> bool:
    targets = config.target_modules
    if isinstance(targets, str) and targets.lower() == "all-linear":
        # peft's `_maybe_include_all_linear_layers`: every linear but the output embedding.
        return name.rsplit(".", 1)[-1] != "lm_head"
    return bool(check_target_module_exists(config, name))


def inject_lora(
    model: nn.Module, config: peft.LoraConfig, targets: Iterable[str] | None = None
) -> LoraAdapter:
    """Wraps the linear layers `config` targets (or exactly the transformers module names
    `targets`) in peft LoRA layers; afterwards only the adapter weights are trainable.

    Raises:
        ConfigError: No linear layer matches the targets (names the targets and the layers).
        ValueError: The model already has an adapter.
    """
    if getattr(model, "lora_adapter", None) is not None:
        raise ValueError("the model already has a LoRA adapter (merge_and_unload it first)")
    layout, linears = transformers_linear_names(model)
    candidates: dict[str, str] = {}  # transformers name -> vlkit name (fused parts unfused)
    fused: dict[str, list[str]] = {}
    for vlkit_name, hf_names in linears.items():
        for hf in hf_names:
            part = f"{vlkit_name}.{hf.rsplit('.', 1)[-1]}" if len(hf_names) > 1 else vlkit_name
            candidates[hf] = part
    if targets is None:
        chosen = [hf for hf in candidates if _targeted(config, hf)]
    else:
        chosen = list(targets)
    if not chosen:
        suffixes = sorted({hf.rsplit(".", 1)[-1] for hf in candidates})
        raise ConfigError(
            f"LoRA targets {config.target_modules!r} match no linear layer of this model "
            f"(its linear layers end in: {', '.join(suffixes)})"
        )
    for vlkit_name, hf_names in linears.items():
        parts = [hf.rsplit(".", 1)[-1] for hf in hf_names]
        if len(hf_names) > 1 and any(hf in chosen for hf in hf_names):
            fused[vlkit_name] = parts
    for vlkit_name, parts in fused.items():
        unfuse(model, vlkit_name, parts)
    names = {candidates[hf]: hf for hf in chosen}
    rank, alpha = {}, {}
    for vlkit_name, hf in names.items():  # per-module r / alpha from the transformers names
        key = re.escape(vlkit_name)
        rank[key] = config.rank_pattern.get(get_pattern_key(config.rank_pattern, hf), config.r)
        alpha[key] = config.alpha_pattern.get(
            get_pattern_key(config.alpha_pattern, hf), config.lora_alpha
        )
    inner = dataclasses.replace(
        config,
        target_modules=sorted(names),
        exclude_modules=None,
        layers_to_transform=None,
        layers_pattern=None,
        rank_pattern=rank,
        alpha_pattern=alpha,
    )
    peft.inject_adapter_in_model(inner, model, adapter_name=_ADAPTER)
    adapter = LoraAdapter(config=copy.deepcopy(config), layout=layout, names=names)
    model.lora_adapter = adapter
    return adapter


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """The model's peft LoRA layers by vlkit module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def save_adapter(model: nn.Module, directory: str | Path, base_model: str | None = None) -> None:
    """Writes the model's LoRA adapter as peft does: `adapter_config.json` +
    `adapter_model.safetensors`, keys under transformers' module names.

    Args:
        base_model: Recorded as the config's `base_model_name_or_path` (default: the directory
            the model was loaded from, when known).

    Raises:
        ValueError: The model has no LoRA adapter.
    """
    adapter: LoraAdapter | None = getattr(model, "lora_adapter", None)
    if adapter is None:
        raise ValueError("the model has no LoRA adapter to save (apply_lora or load_adapter)")
    directory = Path(directory)
    state = {}
    layers = lora_layers(model)
    for vlkit_name, hf in adapter.names.items():
        layer = layers[vlkit_name]
        state[f"{_PREFIX}{hf}.lora_A.weight"] = layer.lora_A[_ADAPTER].weight
        state[f"{_PREFIX}{hf}.lora_B.weight"] = layer.lora_B[_ADAPTER].weight
        if adapter.config.use_dora:
            state[f"{_PREFIX}{hf}.lora_magnitude_vector"] = layer.lora_magnitude_vector[
                _ADAPTER
            ].weight
    config = copy.deepcopy(adapter.config)
    config.base_model_name_or_path = base_model or getattr(model, "source_directory", None)
    config.inference_mode = True  # as `PeftModel.save_pretrained` writes it
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(state, directory / ADAPTER_WEIGHT_FILES[0], metadata={"format": "pt"})
    config.save_pretrained(str(directory))


def read_adapter_config(directory: Path) -> peft.LoraConfig:
    """The `LoraConfig` of an adapter directory, refusing options vlkit does not implement.

    Raises:
        CheckpointError: A missing or unreadable file, not a LoRA adapter, or an unsupported
            option (one line naming the file and the key).
    """
    path = directory / ADAPTER_CONFIG
    if not path.is_file():
        raise CheckpointError(f"no {ADAPTER_CONFIG} in {directory}: not a peft adapter directory")
    raw = read_json_object(path)
    if raw.get("peft_type") != "LORA":
        raise CheckpointError(f"{path}: peft_type {raw.get('peft_type')!r} is not 'LORA'")
    for key, off in _UNSUPPORTED.items():
        if raw.get(key, off) not in (off, None, [], {}):
            raise CheckpointError(
                f"{path}: {key}={raw[key]!r} is not supported by vlkit (allowed: {off!r})"
            )
    try:
        return peft.LoraConfig.from_pretrained(str(directory))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: not a valid LoraConfig ({error})") from error


_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A\.weight|lora_B\.weight|lora_magnitude_vector)$"
)


def load_adapter(model: nn.Module, directory: str | Path) -> LoraAdapter:
    """Loads a peft LoRA adapter (written by transformers + peft or by `save_adapter`) into a
    vlkit model: LoRA layers are injected where the file has weights and filled from it.

    Raises:
        CheckpointError: A missing/unsupported config, or weights whose module is not a linear
            layer of the model or whose shape does not fit (one line naming the file and key).
    """
    directory = Path(directory)
    config = read_adapter_config(directory)
    weights = find_weights(directory, ADAPTER_WEIGHT_FILES)
    layout, linears = transformers_linear_names(model)
    known = {hf for names in linears.values() for hf in names}
    tensors: dict[tuple[str, str], object] = {}
    for key, value in read_weights(weights).items():
        match = _KEY.match(key.removeprefix(_PREFIX))
        if match is None:
            raise CheckpointError(
                f"{weights}: key {key!r} is not a LoRA weight vlkit loads "
                "(expected <module>.lora_A.weight, .lora_B.weight or .lora_magnitude_vector)"
            )
        module = canonical_module_name(match["module"], layout)
        if module not in known:
            raise CheckpointError(
                f"{weights}: key {key!r} targets {module!r}, which is not a linear layer of "
                f"this {type(model).__name__}"
            )
        tensors[(module, match["kind"])] = value
    if not tensors:
        raise CheckpointError(f"{weights}: holds no LoRA weights")
    adapter = inject_lora(model, config, targets=sorted({module for module, _ in tensors}))
    layers = lora_layers(model)
    by_hf = {hf: vlkit_name for vlkit_name, hf in adapter.names.items()}
    for (module, kind), value in tensors.items():
        layer = layers[by_hf[module]]
        if kind == "lora_magnitude_vector":
            if not config.use_dora:
                raise CheckpointError(f"{weights}: {module}.{kind} given but use_dora is false")
            param = layer.lora_magnitude_vector[_ADAPTER].weight
        else:
            param = getattr(layer, kind.split(".")[0])[_ADAPTER].weight
        if tuple(param.shape) != tuple(value.shape):  # type: ignore[attr-defined]
            raise CheckpointError(
                f"{weights}: {module}.{kind} has shape {tuple(value.shape)}, the model's layer "  # type: ignore[attr-defined]
                f"needs {tuple(param.shape)} (r and the layer's size must match)"
            )
        param.data.copy_(value)  # type: ignore[arg-type]
    return adapter
