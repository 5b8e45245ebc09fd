"""Per-layer activation (gradient) checkpointing of any module list (Chen et al. 2016).

A checkpointed layer keeps only its inputs in the forward pass and recomputes its activations
during the backward pass: memory for activations drops from O(layers x activations per layer)
to O(layers x layer input) at the cost of one extra forward per layer.

`checkpoint_modules(layers, True)` installs a per-instance `forward` on each module that runs the
class's own `forward` through `torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`
(the non-reentrant variant: keyword arguments, inputs that need no gradient, and the RNG state
replayed for dropout, so gradients are identical with and without). Nothing about the module
changes otherwise: parameter names, hooks registered on it (they run in `__call__`, outside the
checkpoint) and `state_dict` stay the same, so every model whose layers live in an
`nn.ModuleList` gets checkpointing without a flag in its loop (transformers' approach is a flag
read in each model's loop, `GradientCheckpointingLayer`; this one needs no edit of the loops of
`DecoderLM`'s subclasses, CogVLM's and Flamingo's decoders included).

Checkpointing applies only in training mode with gradients enabled; in eval mode, under
`no_grad` or during generation (the KV cache must not be written twice) the layer runs as is.
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpoint_modules", "is_checkpointed"]


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The class's `forward`, recomputed in the backward pass when training with gradients."""
    forward = type(self).forward
    if not (self.training and torch.is_grad_enabled()):
        return forward(self, *args, **kwargs)
    return checkpoint(forward, self, *args, use_reentrant=False, **kwargs)


def is_checkpointed(module: nn.Module) -> bool:
    """Whether `checkpoint_modules` enabled checkpointing on `module`."""
    forward = module.__dict__.get("forward")
    return isinstance(forward, types.MethodType) and forward.__func__ is _checkpointed_forward


def checkpoint_modules(modules: Iterable[nn.Module], enabled: bool = True) -> int:
    """Turn per-module activation checkpointing on or off; returns how many modules changed.

    The wrapper is a bound method stored on the instance, so `copy.deepcopy` of the model binds
    it to the copy (a closure would keep calling the original module).
    """
    changed = 0
    for module in modules:
        if enabled and not is_checkpointed(module):
            module.forward = types.MethodType(_checkpointed_forward, module)  # type: ignore[method-assign]
            changed += 1
        elif not enabled and is_checkpointed(module):
            del module.forward
            changed += 1
    return changed
