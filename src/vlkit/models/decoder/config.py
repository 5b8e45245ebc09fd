"""Shape of a Llama-style decoder and the result of its forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from vlkit.models.decoder.kv_cache import KVCache, StaticKVCache

__all__ = ["DecoderConfig", "DecoderOutput"]


@dataclass
class DecoderConfig:
    """Shape of a Llama-style decoder.

    Attributes:
        num_kv_heads: Key/value heads (GQA); `num_heads % num_kv_heads == 0`. Equal to `num_heads`
            gives multi-head attention, 1 gives multi-query attention.
        head_dim: Per-head width; `hidden_size // num_heads` when None.
        attention_bias: Biases on the q/k/v/o projections (Llama's `attention_bias`).
        qkv_bias: Biases on q/k/v only (Qwen2); None follows `attention_bias`.
        hidden_act: The gate's activation: "silu" (SwiGLU, every released Llama / Qwen), or
            "gelu", "gelu_pytorch_tanh", "relu" (transformers' names; its test configs use "gelu").
        qk_norm: RMSNorm over each head of the queries and keys before RoPE (Qwen3).
        rope_scaling: The checkpoint's rope parameters when scaled (`rope_type` "linear",
            "dynamic" or "llama3" plus their keys, see `rope.scaled_inv_freq`), else None.
        bos_token_id, eos_token_id, pad_token_id: Special ids of a pretrained LM
            (`generation_config.json`); `DecoderLM.generate` stops at `eos_token_id`.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    qkv_bias: bool | None = None
    hidden_act: str = "silu"
    qk_norm: bool = False
    rope_scaling: dict[str, Any] | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_heads
        if self.qkv_bias is None:
            self.qkv_bias = self.attention_bias


@dataclass
class DecoderOutput:
    """Result of `DecoderLM.forward`.

    Attributes:
        logits: (B, L, V) next-token logits; None when `forward(..., return_hidden=True)`.
        cache: The updated `KVCache` when `use_cache` (or a cache was passed), else None.
        hidden_states: (B, L, D) final hidden states after the last norm, only with
            `return_hidden=True` (the caller applies `DecoderLM.logits_from_hidden` where needed).
    """

    logits: torch.Tensor | None
    cache: KVCache | StaticKVCache | None = None
    hidden_states: torch.Tensor | None = None
