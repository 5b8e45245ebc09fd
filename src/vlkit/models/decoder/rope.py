"""Rotary position embeddings (RoPE, Su et al. 2021) and the context-extension scalings of
pretrained LLMs: "linear" (position interpolation, Chen et al. 2023), "dynamic" (dynamic NTK, the
/u/bloc97 and /u/emozilla Reddit posts) and "llama3" (Llama 3.1's frequency-dependent smoothing).

The arithmetic follows transformers' `modeling_rope_utils.py` (5.25) operation for operation, in
float32, so the cos/sin tables equal `LlamaRotaryEmbedding`'s bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["ROPE_TYPES", "RotaryEmbedding", "base_inv_freq", "scaled_inv_freq"]

ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


def base_inv_freq(head_dim: int, theta: float | torch.Tensor) -> torch.Tensor:
    """(Dh/2,) inverse frequencies theta^(-2i/Dh) of unscaled RoPE, in float32."""
    device = theta.device if isinstance(theta, torch.Tensor) else None
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (theta**exponents)


def scaled_inv_freq(head_dim: int, theta: float, scaling: Mapping[str, Any] | None) -> torch.Tensor:
    """Inverse frequencies for a `rope_type` of `ROPE_TYPES` ("dynamic" returns the unscaled
    ones: it rescales at run time, see `RotaryEmbedding`).

    Args:
        scaling: The checkpoint's rope parameters (`rope_type`, `factor`, and for "llama3"
            `low_freq_factor`, `high_freq_factor`, `original_max_position_embeddings`), or None.
    """
    inv_freq = base_inv_freq(head_dim, theta)
    rope_type = (scaling or {}).get("rope_type", "default")
    if rope_type == "linear":
        # Dividing the frequencies equals dividing the positions by `factor`.
        return inv_freq / scaling["factor"]
    if rope_type != "llama3":
        return inv_freq
    # `_compute_llama3_parameters`: long wavelengths are divided by `factor`, short ones kept,
    # those in between interpolated smoothly.
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """RoPE cos/sin tables for integer positions, half-rotation layout (HF Llama).

    With "dynamic" scaling the base grows once a forward's largest position passes
    `max_position_embeddings`: theta * (factor * len / max - (factor - 1)) ** (Dh / (Dh - 2)),
    len = largest position + 1 (`_compute_dynamic_ntk_parameters`). transformers keeps the largest
    length seen so far in the module; here each forward uses its own, which is the same within one
    `generate` call (positions only grow) but not across calls after a longer one.
    """

    def __init__(
        self,
        head_dim: int,
        theta: float,
        scaling: Mapping[str, Any] | None = None,
        max_position_embeddings: int = 2048,
    ) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.dynamic_factor = None
        if scaling is not None and scaling.get("rope_type") == "dynamic":
            self.dynamic_factor = float(scaling["factor"])
        self.max_position_embeddings = max_position_embeddings
        self.register_buffer(
            "inv_freq", scaled_inv_freq(head_dim, theta, scaling), persistent=False
        )

    def forward(
        self, position_ids: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) positions -> cos, sin of shape (B, 1, L, Dh) in `dtype` (computed in float32)."""
        inv_freq = self.inv_freq.float()
        if self.dynamic_factor is not None and position_ids.numel():
            inv_freq = self._dynamic_inv_freq(position_ids)
        freqs = position_ids[..., None].float() * inv_freq  # (B, L, Dh/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (B, L, Dh)
        return emb.cos()[:, None].to(dtype), emb.sin()[:, None].to(dtype)

    def _dynamic_inv_freq(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Dynamic NTK with tensor ops only (no host sync); unscaled up to `max_position_embeddings`."""
        seq_len = position_ids.max() + 1  # int64, as in `dynamic_frequency_update`
        longest = torch.clamp(seq_len, min=self.max_position_embeddings)
        factor, dim = self.dynamic_factor, self.head_dim
        ratio = factor * longest / self.max_position_embeddings - (factor - 1)  # float32
        base = self.theta * ratio ** (dim / (dim - 2))
        scaled = base_inv_freq(dim, base)
        return torch.where(seq_len > self.max_position_embeddings, scaled, self.inv_freq.float())
