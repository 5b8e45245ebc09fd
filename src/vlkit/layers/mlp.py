"""The two-layer feed-forward network of a transformer block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.layers.activations import get_activation

# QuickGELU(h) = h * sigmoid(1.702 h) = SiLU(1.702 h) / 1.702.
QUICK_GELU_SCALE = 1.702


class Mlp(nn.Module):
    """Linear -> activation -> Linear."""

    def __init__(self, dim: int, hidden_dim: int, activation: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.activation = get_activation(activation)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.quick_gelu = activation == "quick_gelu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quick_gelu and type(self.fc1) is nn.Linear and type(self.fc2) is nn.Linear:
            return self._quick_gelu_forward(x)
        return self.fc2(self.activation(self.fc1(x)))

    def _quick_gelu_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same function with QuickGELU's two scalings folded into the GEMMs' alpha, leaving
        one SiLU pass over the (large) hidden activations instead of three elementwise passes
        (about 10% of a CLIP ViT's time on CPU; benchmarks/encode_throughput.py)."""
        s = QUICK_GELU_SCALE
        tokens = x.reshape(-1, x.shape[-1])
        # addmm is on autocast's low-precision list, so mixed precision casts it like a Linear.
        hidden = torch.addmm(self.fc1.bias * s, tokens, self.fc1.weight.t(), alpha=s)
        out = torch.addmm(self.fc2.bias, F.silu(hidden), self.fc2.weight.t(), alpha=1 / s)
        return out.view(*x.shape[:-1], out.shape[-1])
