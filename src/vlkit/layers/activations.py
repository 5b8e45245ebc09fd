"""Activation functions named as checkpoints name them (`hidden_act` in Hugging Face configs)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_pytorch_tanh")


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """Sigmoid approximation of GELU used by the original OpenAI CLIP (clip/model.py `QuickGELU`)."""
    return x * torch.sigmoid(1.702 * x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """Tanh approximation of GELU, used by SigLIP (`gelu_pytorch_tanh` in transformers)."""
    return F.gelu(x, approximate="tanh")


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Returns the activation function called `name` (one of `ACTIVATIONS`)."""
    if name == "quick_gelu":
        return quick_gelu
    if name == "gelu":
        return F.gelu
    if name in ("gelu_pytorch_tanh", "gelu_tanh"):
        return gelu_tanh
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")
