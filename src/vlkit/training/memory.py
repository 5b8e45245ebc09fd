"""Memory options for fine-tuning on a 24 GB GPU or a laptop (issue 13, item 5).

- **Gradient checkpointing per part** (`gradient_checkpointing=language,vision`, `true`, `false`):
  each decoder layer of the LM and each block of the vision tower recomputes its activations in
  the backward pass (`vlkit.layers.checkpointing`; Chen et al. 2016, "Training deep nets with
  sublinear memory cost"). Gradients are the same as without (non-reentrant checkpointing replays
  the RNG state for dropout). Parts: "language" (the decoder of a generative model; a CLIP's text
  tower) and "vision" (SmolVLM's SigLIP tower, a CLIP ViT, a `VisionTokens` over a ViT).
- **Frozen towers out of autograd**: a generative model's fully frozen vision tower runs under
  `no_grad` and stays in eval mode while the model trains (`GenerativeVLM.encode_images`,
  `FlamingoVLM.encode_media`, `frozen_vision.keep_frozen_in_eval`); `activation_bytes` measures
  what a forward keeps alive for the backward pass.
- **8-bit AdamW** (`optim.optimizer=adamw8bit`): bitsandbytes' `AdamW8bit` (Dettmers et al. 2022,
  "8-bit optimizers via block-wise quantization"), CUDA only.
- **QLoRA-style 4-bit base weights** (`quantize_base=4bit`): every frozen `nn.Linear` (the LM
  head and tied weights excepted, as transformers' `BitsAndBytesConfig` skips `lm_head`) becomes a
  bitsandbytes `Linear4bit` with NF4 weights and double quantization (Dettmers et al. 2023,
  "QLoRA", Sec. 3), CUDA only; LoRA adapters (trainable) stay in full precision.

On CPU, or without bitsandbytes, the last two are refused with a one-line `ConfigError` naming
the key, never silently ignored. bf16 autocast (`precision=bf16`) is the Trainer's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from vlkit.overrides import ConfigError
from vlkit.training.config import CHECKPOINT_PARTS, checkpoint_parts

__all__ = [
    "CHECKPOINT_PARTS",
    "activation_bytes",
    "adamw_8bit",
    "apply_memory_options",
    "checkpoint_parts",
    "checkpointing_targets",
    "quantize_base_4bit",
    "set_gradient_checkpointing",
]

# ---------------------------------------------------------------- gradient checkpointing


def _vision_target(vision: nn.Module) -> nn.Module | None:
    """The module whose `set_gradient_checkpointing` covers a VLM's vision encoder, or None."""
    if hasattr(vision, "set_gradient_checkpointing"):
        return vision  # SmolVLMVisionTransformer, VisionTransformer
    tower = getattr(vision, "tower", None)  # frozen_vision.VisionTokens around a vlkit tower
    return _vision_target(tower) if isinstance(tower, nn.Module) else None


def checkpointing_targets(model: nn.Module) -> dict[str, nn.Module | None]:
    """{"language": module, "vision": module} whose `set_gradient_checkpointing` checkpoints the
    part per layer; None for a part the model has but cannot checkpoint (a ResNet tower)."""
    if hasattr(model, "decoder"):  # generative VLMs: GenerativeVLM and subclasses, FlamingoVLM
        targets: dict[str, nn.Module | None] = {"language": model.decoder}
        vision = getattr(model, "vision", None)
        if isinstance(vision, nn.Module):
            targets["vision"] = _vision_target(vision)
        return targets
    if hasattr(model, "text") and hasattr(model, "vision"):  # CLIP: text tower = "language"
        return {"language": _vision_target(model.text), "vision": _vision_target(model.vision)}
    if hasattr(model, "set_gradient_checkpointing") and hasattr(model, "lm_head"):
        return {"language": model}  # a DecoderLM on its own
    return {}


def set_gradient_checkpointing(
    model: nn.Module, value: bool | str | Iterable[str], key: str = "gradient_checkpointing"
) -> tuple[str, ...]:
    """Checkpoint the chosen parts of `model` per layer and turn it off for the others.

    Args:
        model: A generative VLM, a CLIP or a `DecoderLM`.
        value: True (every part the model has), False (none), or parts ("language,vision").
        key: The setting's name for error messages.

    Returns:
        The parts checkpointed.

    Raises:
        ConfigError: An unknown part, a part the model lacks, or one it cannot checkpoint.
    """
    parts = checkpoint_parts(value, key)
    targets = checkpointing_targets(model)
    if value is True or (isinstance(value, str) and value.strip().lower() in ("true", "all")):
        parts = tuple(part for part in CHECKPOINT_PARTS if targets.get(part) is not None)
        if not parts:
            raise ConfigError(f"{key}: {type(model).__name__} has no layers to checkpoint")
    for part in parts:
        if part not in targets:
            raise ConfigError(f"{key}: {type(model).__name__} has no {part} part "
                              f"(it has: {', '.join(targets) or 'none'})")  # fmt: skip
        if targets[part] is None:
            vision = getattr(model, part if part != "language" else "text", None)
            name = type(getattr(vision, "tower", vision)).__name__
            raise ConfigError(f"{key}: the {part} part ({name}) has no per-layer checkpointing; "
                              f"leave {part} out")  # fmt: skip
    for part, target in targets.items():
        if target is not None:
            target.set_gradient_checkpointing(part in parts)
    return parts


# ----------------------------------------------------------------------- measuring


class _LiveStorages(TorchDispatchMode):
    """Records a weak reference to the storage of every tensor an op creates (as torch's own
    `torch.distributed._tools.mem_tracker` does), to see which are still alive afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: dict[int, tuple[Any, int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        from torch.multiprocessing.reductions import StorageWeakRef

        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                self.storages[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())
        return out


def activation_bytes(fn: Callable[[], Any], model: nn.Module | None = None) -> tuple[Any, int]:
    """Run `fn()` and measure the bytes of the tensors it created that are still alive after it
    returns, its result (e.g. a loss whose graph holds the activations for backward) aside from
    the model's parameters and buffers: what the backward pass will read. Counts storages once
    (views share theirs), whether autograd saved them or a checkpoint kept a layer's input.

    Returns:
        (fn's result, bytes).
    """
    own = set()
    if model is not None:
        own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    tracker = _LiveStorages()
    with tracker:
        result = fn()
    total = sum(size for ptr, (ref, size) in tracker.storages.items()
                if ptr not in own and not ref.expired())  # fmt: skip
    return result, total


# ------------------------------------------------------------------- bitsandbytes


def _bitsandbytes(key: str, device: torch.device, what: str) -> Any:
    """bitsandbytes, imported lazily, or a one-line refusal naming `key`."""
    if device.type != "cuda":
        raise ConfigError(f"{key}: {what} needs a CUDA device (bitsandbytes); this run is on "
                          f"{device.type}")  # fmt: skip
    try:
        import bitsandbytes
    except ImportError:
        raise ConfigError(f"{key}: {what} needs bitsandbytes, which is not installed "
                          "(pip install bitsandbytes)") from None  # fmt: skip
    return bitsandbytes


def adamw_8bit(
    groups: list[dict], lr: float, betas: tuple[float, float], eps: float
) -> torch.optim.Optimizer:
    """bitsandbytes' `AdamW8bit` over parameter groups (block-wise 8-bit moments).

    Raises:
        ConfigError: The parameters are not on a CUDA device, or bitsandbytes is missing.
    """
    params = [p for group in groups for p in group["params"]]
    device = params[0].device if params else torch.device("cpu")
    bnb = _bitsandbytes("optim.optimizer=adamw8bit", device, "8-bit AdamW")
    return bnb.optim.AdamW8bit(groups, lr=lr, betas=betas, eps=eps)


def _shared_weights(model: nn.Module) -> set[int]:
    """Ids of parameters held by more than one module (tied embeddings and LM heads)."""
    seen: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            seen[id(param)] = seen.get(id(param), 0) + 1
    return {pid for pid, count in seen.items() if count > 1}


def quantize_base_4bit(
    model: nn.Module,
    device: torch.device,
    compute_dtype: torch.dtype = torch.bfloat16,
    skip: tuple[str, ...] = ("lm_head",),
) -> int:
    """Replace each frozen `nn.Linear` by a bitsandbytes NF4 `Linear4bit` on `device` (QLoRA).

    Linear layers with a trainable weight or bias (LoRA's A and B, trained parts), layers named
    in `skip` and layers whose weight is shared (a tied LM head) keep full precision. Works
    before or after LoRA injection: a peft LoRA layer's `base_layer` is a frozen `nn.Linear`.

    Returns:
        How many layers were quantized.

    Raises:
        ConfigError: Not a CUDA device, bitsandbytes missing, or no frozen linear layer.
    """
    bnb = _bitsandbytes("quantize_base=4bit", device, "4-bit base weights")
    shared = _shared_weights(model)
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or name in skip or id(child.weight) in shared:
                continue
            if any(p.requires_grad for p in child.parameters()):
                continue
            quantized = bnb.nn.Linear4bit(
                child.in_features, child.out_features, bias=child.bias is not None,
                compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
            )  # fmt: skip
            # Assigning `.data` keeps bitsandbytes' Params4bit (quant type, owning module); the
            # move to CUDA quantizes it.
            quantized.weight.data = child.weight.data.detach().to("cpu")
            if child.bias is not None:
                quantized.bias = nn.Parameter(child.bias.data.detach().clone(),
                                              requires_grad=False)  # fmt: skip
            setattr(parent, name, quantized.to(device))
            replaced += 1
    if not replaced:
        raise ConfigError("quantize_base=4bit: no frozen linear layer to quantize (freeze the "
                          "base model or add LoRA adapters first)")  # fmt: skip
    return replaced


def apply_memory_options(model: nn.Module, config: Any, device: torch.device) -> nn.Module:
    """The Trainer's memory options on a model already on `device`: 4-bit base weights
    (`config.quantize_base`), then gradient checkpointing (`config.gradient_checkpointing`).
    An optimizer must be created afterwards. Returns the model."""
    if getattr(config, "quantize_base", "none") == "4bit":
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision, torch.float32)
        quantize_base_4bit(model, device, dtype)
    if config.gradient_checkpointing:
        set_gradient_checkpointing(model, config.gradient_checkpointing)
    return model
