"""The two-layer feed-forward network of a transformer block."""

from __future__ import annotations

import torch
from torch import nn

from vlkit.layers.activations import get_activation


class Mlp(nn.Module):
    """Linear -> activation -> Linear."""

    def __init__(self, dim: int, hidden_dim: int, activation: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.activation = get_activation(activation)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))
