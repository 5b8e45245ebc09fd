"""The transformers name of each linear layer of a vlkit model, as peft sees it.

peft addresses a LoRA target by the module's name in the *transformers* model in memory
(`model.text_model.layers.0.self_attn.q_proj` in SmolVLM, `model.language_model.layers.0...` and
`model.vision_tower.encoder.layers.0.self_attn.q_proj` in LLaVA, `model.layers.0...` in Llama:
transformers 5.25, what `PeftModel.save_pretrained` writes after `base_model.model.`). vlkit's
modules carry other names (`decoder.model.layers.0...`, `vision.tower.transformer.blocks.0...`),
so target patterns are matched against the transformers names and the adapters saved under
them. The mapping comes from the existing checkpoint converters (`hf_smolvlm`, `hf_llava`,
`hf_causal_lm`), so it cannot drift from what `from_pretrained` loads.

vlkit's ViT fuses q/k/v into one `qkv` linear where transformers' CLIP/SigLIP have three;
`UnfusedLinear` splits such a layer into `q_proj`, `k_proj`, `v_proj` children when a LoRA
target selects one of them, so that peft's own LoRA layer wraps each part exactly as in
transformers (`fuse_back` restores the single linear after merging).
"""

from __future__ import annotations

import torch
from torch import nn

from vlkit.fusion.pixel_shuffle import PixelShuffleConnector
from vlkit.hub.hf_llava import _hf_pairs
from vlkit.models.decoder import DecoderLM
from vlkit.models.llava import LlavaVLM
from vlkit.models.smolvlm import GenerativeVLM
from vlkit.models.smolvlm_vision import SmolVLMVisionTransformer

__all__ = [
    "UnfusedLinear",
    "canonical_module_name",
    "fuse_back",
    "transformers_linear_names",
    "unfuse",
]

# SmolVLM / Idefics3: vlkit prefix -> transformers prefix (the inverse of `hf_smolvlm._PREFIXES`).
_SMOLVLM = (
    ("vision.", "model.vision_model."),
    ("connector.", "model.connector."),
    ("decoder.model.", "model.text_model."),
    ("decoder.lm_head", "lm_head"),
)
# LLaVA: the layout `hf_llava` writes on disk -> transformers 5.25's names in memory.
_LLAVA_SAVED = (
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head", "lm_head"),
)
# Names in adapters written by older transformers (4.x in-memory LLaVA layout) -> 5.25's.
_LLAVA_ALIASES = (
    ("model.vision_tower.vision_model.", "model.vision_tower."),
    ("vision_tower.vision_model.", "model.vision_tower."),
    *_LLAVA_SAVED,
)


def _renamed(name: str, rules: tuple[tuple[str, str], ...]) -> str:
    for old, new in rules:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def _linears(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if type(module) is nn.Linear]


def transformers_linear_names(model: nn.Module) -> tuple[str, dict[str, list[str]]]:
    """(layout, {vlkit linear module name: its transformers module name(s)}).

    The layout is "smolvlm", "llava", "causal_lm", or "vlkit" for models without a transformers
    equivalent (their own names are used). A fused q/k/v linear maps to three names.
    """
    if isinstance(model, LlavaVLM):
        try:
            return "llava", _llava_names(model)
        except ValueError:  # e.g. a composed ResNet tower: transformers has no such LLaVA
            pass
    elif type(model) is DecoderLM:
        return "causal_lm", {name: [name] for name in _linears(model)}
    elif (
        type(model) is GenerativeVLM
        and isinstance(model.vision, SmolVLMVisionTransformer)
        and isinstance(model.connector, PixelShuffleConnector)
    ):
        return "smolvlm", {name: [_renamed(name, _SMOLVLM)] for name in _linears(model)}
    return "vlkit", {name: [name] for name in _linears(model)}


def _llava_names(model: LlavaVLM) -> dict[str, list[str]]:
    # `_hf_pairs` is hf_llava's per-parameter rename (the one `save_pretrained` uses).
    params = dict(_hf_pairs(model))
    names = {}
    for name in _linears(model):
        hf = params.get(f"{name}.weight") or []
        if name == "decoder.lm_head" and not hf:  # tied: transformers still has the module
            hf = ["language_model.lm_head.weight"]
        if hf:
            names[name] = [_renamed(key.removesuffix(".weight"), _LLAVA_SAVED) for key in hf]
    return names


def canonical_module_name(name: str, layout: str) -> str:
    """A module name from a peft adapter file (any transformers version's layout) -> the name
    `transformers_linear_names` uses."""
    return _renamed(name, _LLAVA_ALIASES) if layout == "llava" else name


class UnfusedLinear(nn.Module):
    """A fused q/k/v `nn.Linear` as separate `q_proj`, `k_proj`, `v_proj` linears whose
    outputs are concatenated: the same function, with transformers' per-projection modules for
    peft to wrap."""

    def __init__(self, fused: nn.Linear, part_names: list[str]) -> None:
        super().__init__()
        self.part_names = part_names
        weights = fused.weight.chunk(len(part_names), dim=0)
        biases = fused.bias.chunk(len(part_names)) if fused.bias is not None else None
        for i, part in enumerate(part_names):
            linear = nn.Linear(fused.in_features, weights[i].shape[0], bias=biases is not None)
            linear.to(device=fused.weight.device, dtype=fused.weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(weights[i])
                if biases is not None:
                    linear.bias.copy_(biases[i])
            linear.weight.requires_grad_(fused.weight.requires_grad)
            if linear.bias is not None:
                linear.bias.requires_grad_(fused.bias.requires_grad)  # type: ignore[union-attr]
            self.add_module(part, linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., sum of the parts' outputs), in the fused layer's order."""
        return torch.cat([getattr(self, part)(x) for part in self.part_names], dim=-1)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def unfuse(model: nn.Module, name: str, part_names: list[str]) -> None:
    """Replaces the fused linear `name` with an `UnfusedLinear` of the given part names."""
    fused = model.get_submodule(name)
    assert type(fused) is nn.Linear, f"{name} is not a plain nn.Linear"
    _set_module(model, name, UnfusedLinear(fused, part_names))


def fuse_back(model: nn.Module) -> None:
    """Replaces every `UnfusedLinear` (whose parts are plain linears again, e.g. after a LoRA
    merge) with one `nn.Linear`, so the state dict has vlkit's usual keys."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, UnfusedLinear):
            continue
        parts = [getattr(module, part) for part in module.part_names]
        weight = torch.cat([part.weight for part in parts], dim=0)
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias=parts[0].bias is not None)
        fused.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(weight)
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([part.bias for part in parts]))
        fused.requires_grad_(parts[0].weight.requires_grad)
        _set_module(model, name, fused)
