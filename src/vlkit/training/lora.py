"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") on any linear layer.

Each targeted linear W (out, in) gets a trainable update scaled by `alpha / r` (rsLoRA, Kalajdzievski
2023: `alpha / sqrt(r)`): `y = W x + (alpha / r) * B A dropout(x)`, A (r, in) random, B (out, r)
zero, so training starts from the base model. DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed
Low-Rank Adaptation") also learns a per-row magnitude m: `y = m * (W + s B A) x / ||W + s B A||_row`.

The layers are peft's own (`peft.tuners.lora.Linear`, through `vlkit.hub.peft.inject_lora`), so
the math, the initialisation and merge/unmerge are exactly peft's. Targets follow peft's
`target_modules` semantics against the model's *transformers* module names: a list of names
matches a module whose name equals one or ends with "." + it (`q_proj`,
`self_attn.q_proj`), a single string is a regex that must match the whole name
(`.*language_model.*\\.(q_proj|v_proj)`), and "all-linear" means every linear layer except
`lm_head`. Adapters save in peft's format (`vlkit.hub.peft.save_adapter`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import peft
from torch import nn

from vlkit.hub.peft import LoraAdapter, inject_lora, lora_layers
from vlkit.hub.peft_names import fuse_back
from vlkit.overrides.parsing import ConfigError

__all__ = [
    "LoraSpec",
    "apply_lora",
    "lora_parameters",
    "merge_and_unload",
    "merge_lora",
    "parse_lora_spec",
    "unmerge_lora",
]

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass
class LoraSpec:
    """What to adapt and how (the `--lora` option of `vlkit finetune`).

    Attributes:
        r: Rank of the update (> 0).
        alpha: Scale numerator: the update is multiplied by alpha / r (alpha / sqrt(r) with
            `rslora`).
        dropout: Dropout on the adapter's input, in [0, 1).
        targets: Module names (peft `target_modules` semantics, transformers naming), a regex
            string matched against whole names, or "all-linear".
        rslora: Rank-stabilised scaling alpha / sqrt(r).
        dora: Weight-decomposed LoRA (a learned magnitude per output row).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] | str = ("q_proj", "k_proj", "v_proj", "o_proj")
    rslora: bool = False
    dora: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"LoRA option r must be a positive integer, got {self.r!r}")
        if not isinstance(self.alpha, int | float) or not self.alpha > 0:
            raise ConfigError(f"LoRA option alpha must be a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise ConfigError(f"LoRA option dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.targets, str):
            self.targets = tuple(self.targets)
        if not self.targets or any(not isinstance(t, str) or not t for t in self.targets):
            raise ConfigError(
                f"LoRA option targets must be module names (e.g. q_proj,v_proj), a regex or "
                f"all-linear, got {self.targets!r}"
            )

    def to_peft(self) -> peft.LoraConfig:
        """The equivalent `peft.LoraConfig` (peft's defaults for everything else)."""
        targets = self.targets if isinstance(self.targets, str) else list(self.targets)
        return peft.LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            use_rslora=self.rslora,
            use_dora=self.dora,
        )


_KEYS = tuple(field.name for field in fields(LoraSpec))


def _parse_value(key: str, text: str) -> Any:
    if key == "r":
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"LoRA option r must be a positive integer, got {text!r}") from None
    if key in ("alpha", "dropout"):
        try:
            return float(text)
        except ValueError:
            allowed = "a positive number" if key == "alpha" else "a number in [0, 1)"
            raise ConfigError(f"LoRA option {key} must be {allowed}, got {text!r}") from None
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ConfigError(f"LoRA option {key} must be true or false, got {text!r}")


def parse_lora_spec(text: str) -> LoraSpec:
    """Parses "r=16,alpha=32,dropout=0.05,targets=q_proj,k_proj,v_proj,o_proj".

    `targets=` takes every following item without "=" (a comma-separated name list);
    `targets=re:<regex>` gives a regex (peft's string `target_modules`), `targets=all-linear`
    every linear layer but `lm_head`. Keys: r, alpha, dropout, targets, rslora, dora.

    Raises:
        ConfigError: An unknown key, a bad value or an item that is not key=value (one line
            naming the key and what is allowed).
    """
    values: dict[str, Any] = {}
    key = None
    for item in (part.strip() for part in text.split(",")):
        if "=" not in item:
            if key == "targets" and item and isinstance(values["targets"], list):
                values["targets"].append(item)
                continue
            raise ConfigError(
                f"LoRA spec item {item!r} is not key=value (allowed keys: {', '.join(_KEYS)})"
            )
        key, _, value = (s.strip() for s in item.partition("="))
        if key not in _KEYS:
            raise ConfigError(f"unknown LoRA option {key!r} (allowed: {', '.join(_KEYS)})")
        if key in values:
            raise ConfigError(f"LoRA option {key} is given twice")
        if key != "targets":
            values[key] = _parse_value(key, value)
        elif value.startswith("re:"):
            values[key] = value[len("re:") :]
        else:
            values[key] = value if value == "all-linear" else [value] if value else []
    return LoraSpec(**values)


def apply_lora(model: nn.Module, spec: LoraSpec | str | peft.LoraConfig) -> LoraAdapter:
    """Adds LoRA adapters to the model's linear layers that `spec` targets, in place; only the
    adapter weights stay trainable.

    Args:
        model: Any vlkit model; SmolVLM/Idefics3, LLaVA and Llama-family LMs are matched by
            their transformers module names (`vlkit.hub.peft_names`), others by their own.
        spec: A `LoraSpec`, its string form (`parse_lora_spec`) or a `peft.LoraConfig`.

    Returns:
        The adapter description, also kept as `model.lora_adapter`.

    Raises:
        ConfigError: A bad spec string; ValueError: no layer matches, or an adapter is there.
    """
    if isinstance(spec, str):
        spec = parse_lora_spec(spec)
    config = spec.to_peft() if isinstance(spec, LoraSpec) else spec
    adapter = inject_lora(model, config)
    for name, param in model.named_parameters():  # peft does this too; make it a guarantee
        param.requires_grad_(".lora_" in name)
    return adapter


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter weights (what the optimizer should update)."""
    return [param for name, param in model.named_parameters() if ".lora_" in name]


def merge_lora(model: nn.Module) -> None:
    """Adds each adapter's update into its base weight (peft's `merge`); the LoRA path is then
    skipped, so outputs are unchanged up to rounding. Undone by `unmerge_lora`."""
    for layer in lora_layers(model).values():
        if not layer.merged:
            layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Subtracts the merged updates again (peft's `unmerge`)."""
    for layer in lora_layers(model).values():
        if layer.merged:
            layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merges the adapters and removes the LoRA layers: the model is a plain vlkit model again
    (fused q/k/v restored), which `save_pretrained` writes as an ordinary checkpoint.

    Base weights stay frozen (requires_grad False), as after peft's `merge_and_unload`.
    """
    for name, layer in lora_layers(model).items():
        if not layer.merged:
            layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
    fuse_back(model)
    model.lora_adapter = None
    if hasattr(model, "peft_config"):  # set by `peft.inject_adapter_in_model`
        del model.peft_config
    return model
