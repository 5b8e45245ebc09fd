"""Llama-style decoder-only language model (Touvron et al. 2023), the text model of generative VLMs.

Pre-norm blocks: RMSNorm (Zhang & Sennrich 2019) -> grouped-query self-attention (GQA, Ainslie et
al. 2023) with rotary position embeddings (RoPE, Su et al. 2021, in the "rotate_half" layout of
Hugging Face Llama) -> RMSNorm -> SwiGLU MLP (Shazeer 2020). Parameter names equal Hugging Face
`LlamaForCausalLM`'s (`model.layers.N.self_attn.q_proj.weight`, ...), so loading a checkpoint is a
near-identity mapping (`from_hf_llama_state_dict`). `forward` accepts `inputs_embeds` so that a VLM
can splice image embeddings into the token sequence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DecoderConfig:
    """Shape of a Llama-style decoder.

    Attributes:
        num_kv_heads: Key/value heads (GQA); `num_heads % num_kv_heads == 0`. Equal to `num_heads`
            gives multi-head attention, 1 gives multi-query attention.
        head_dim: Per-head width; `hidden_size // num_heads` when None.
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

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_heads


@dataclass
class DecoderOutput:
    """Result of `DecoderLM.forward`.

    Attributes:
        logits: (B, L, V) next-token logits.
        cache: The updated `KVCache` when `use_cache` (or a cache was passed), else None.
    """

    logits: torch.Tensor
    cache: KVCache | StaticKVCache | None = None


class KVCache:
    """Per-layer key/value cache that grows by concatenation along the sequence axis.

    `keys[i]` and `values[i]` have shape (B, H_kv, T, Dh): batch, key/value heads (before GQA
    repetition), cached length T, head width. Keys are stored after RoPE, so cached entries never
    need re-rotation. Slot t of the cache corresponds to column t of the full (B, T) attention mask.
    """

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def seq_len(self) -> int:
        """Number of cached positions T (0 when empty)."""
        return self.keys[0].shape[2] if self.keys else 0

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new (B, H_kv, L, Dh) keys/values for `layer`; return the full (B, H_kv, T+L, Dh)."""
        if layer == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        return self.keys[layer], self.values[layer]

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows in place (beam search): `index` is a (B',) LongTensor of old rows."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]


class StaticKVCache:
    """Preallocated key/value cache of fixed length, written in place (for CUDA graphs).

    The counterpart of Hugging Face's `StaticCache`: `keys[i]` and `values[i]` are
    (B, H_kv, S, Dh) buffers with S = `max_len` slots, allocated once. A forward writes its L new
    keys/values at the slots in the (L,) tensor `cache_position` with `index_copy_`, so tensor
    shapes and addresses never change from one token to the next, which is what a captured CUDA
    graph needs (it replays fixed kernels on fixed memory; see the PyTorch CUDA-graph notes,
    https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs). Attention always runs over all
    S slots: `slot_mask` (B, S) marks the slots that hold real (non-padding) tokens, and the mask
    built by `prepare` hides padding and every slot after the query's own (unwritten slots are
    after it), so the result equals attention over a `KVCache` of the written slots.

    Slot t corresponds to column t of the (B, T) attention mask, as in `KVCache`. `seq_len`
    counts the slots written by forwards that let the cache choose the positions; a caller that
    passes `cache_position` itself (e.g. a captured decode step) keeps `seq_len` up to date.
    """

    def __init__(
        self,
        config: DecoderConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch_size, config.num_kv_heads, max_len, config.head_dim)
        self.keys = [
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_layers)
        ]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.slot_mask = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.slots = torch.arange(max_len, device=device)  # (S,) slot indices, built once
        self.cache_position = self.slots[:0]  # (L,) slots of the current forward
        self.batch_size, self.max_len, self.seq_len = batch_size, max_len, 0

    def __len__(self) -> int:
        return len(self.keys)

    def reset(self) -> None:
        """Empty the cache in place (buffers keep their addresses, so captured graphs stay valid)."""
        for buffer in [*self.keys, *self.values, self.slot_mask]:
            buffer.zero_()
        self.seq_len = 0

    def prepare(
        self,
        n: int,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache_position: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Register L = `n` new tokens; return their attention mask and RoPE positions.

        Only tensor operations depend on `cache_position`, so a CUDA graph can capture this.

        Args:
            n: Number of new tokens L.
            attention_mask: (B, T + L) padding mask over written plus new slots (as for
                `KVCache`, needs `cache_position` None), or None when the new tokens are real.
            position_ids: (B, L) RoPE positions, or None for `cumsum(slot_mask) - 1` at the new
                slots (what `DecoderLM.forward` computes for a `KVCache`).
            cache_position: (L,) slots to write; None means the L slots after `seq_len`, which
                then advances by L.

        Returns:
            mask (B, 1, L, S) bool (True = attend) and position_ids (B, L).
        """
        if cache_position is None:
            past = self.seq_len
            if past + n > self.max_len:
                raise ValueError(f"static cache full: {past} + {n} tokens > {self.max_len} slots")
            if attention_mask is not None and attention_mask.shape[1] != past + n:
                raise ValueError(
                    f"attention_mask has {attention_mask.shape[1]} columns, expected cached + new = {past + n}"
                )
            cache_position = self.slots[past : past + n]
            self.seq_len = past + n
            if attention_mask is not None:
                self.slot_mask[:, : past + n] = attention_mask.bool()
        elif attention_mask is not None:
            raise ValueError("pass either attention_mask or cache_position to a static cache")
        if attention_mask is None:
            self.slot_mask.index_fill_(1, cache_position, True)
        self.cache_position = cache_position
        if position_ids is None:
            pos = self.slot_mask.long().cumsum(-1) - 1  # (B, S)
            pos = pos.masked_fill(~self.slot_mask, 1).index_select(1, cache_position)  # (B, L)
            position_ids = pos
        q_slot = cache_position[:, None]  # (L, 1)
        causal = self.slots[None, :] <= q_slot  # (L, S): also hides the unwritten slots
        mask = causal[None, None] & self.slot_mask[:, None, None, :]  # (B, 1, L, S)
        # A padding query sees at least its own slot (no all-masked row: SDPA would give NaN).
        return mask | (self.slots[None, :] == q_slot)[None, None], position_ids

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, H_kv, L, Dh) keys/values at `cache_position`; return the (B, H_kv, S, Dh) buffers."""
        self.keys[layer].index_copy_(2, self.cache_position, k)
        self.values[layer].index_copy_(2, self.cache_position, v)
        return self.keys[layer], self.values[layer]

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows in place (beam search): `index` is a (B,) LongTensor of old rows."""
        for buffer in [*self.keys, *self.values, self.slot_mask]:
            buffer.copy_(buffer.index_select(0, index))


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019): x / rms(x) * g, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021): cos/sin tables for integer positions, half-rotation layout."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (
            theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
        )
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(
        self, position_ids: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) positions -> cos, sin of shape (B, 1, L, Dh) in `dtype` (computed in float32)."""
        freqs = position_ids[..., None].float() * self.inv_freq.float()  # (B, L, Dh/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (B, L, Dh)
        return emb.cos()[:, None].to(dtype), emb.sin()[:, None].to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last axis (HF Llama's RoPE layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, L, Dh) queries or keys by position-dependent angles."""
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    """Grouped-query self-attention (Ainslie et al. 2023) with RoPE and an optional KV cache."""

    def __init__(self, config: DecoderConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = config.head_dim
        d, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | StaticKVCache | None,
    ) -> torch.Tensor:
        """x (B, L, D); mask (B, 1, L, T) bool (True = attend) or None for plain causal."""
        b, n, _ = x.shape
        q = (
            self.q_proj(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        )  # (B, H, L, Dh)
        k = self.k_proj(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, H_kv, T, Dh)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:  # share each key/value head across `groups` query heads
            k = k.repeat_interleave(groups, dim=1)  # (B, H, T, Dh)
            v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and n > 1
        )  # (B, H, L, Dh)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        d, h, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(d, h, bias=bias)
        self.up_proj = nn.Linear(d, h, bias=bias)
        self.down_proj = nn.Linear(h, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: DecoderConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | StaticKVCache | None,
    ) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D); see `Attention.forward` for the other arguments."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    """Embedding, decoder layers and final norm (HF `LlamaModel`); returns hidden states."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)


class DecoderLM(nn.Module):
    """Causal language model: (input ids or embeddings) -> next-token logits, with a KV cache."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DecoderModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding table (VLMs embed text ids with it before splicing images in)."""
        return self.model.embed_tokens

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | StaticKVCache | None = None,
        use_cache: bool = False,
        cache_position: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """Run the decoder on new tokens, optionally continuing from a cache.

        Args:
            input_ids: (B, L) token ids; exactly one of `input_ids` / `inputs_embeds`.
            inputs_embeds: (B, L, D) input embeddings (e.g. text with image features spliced in).
            attention_mask: (B, T + L) padding mask over cached plus new positions, 1 = keep,
                0 = padding (left padding for batched generation). May also be (B, L) when the
                cache is empty. None means no padding.
            position_ids: (B, L) RoPE positions; by default `cumsum(mask) - 1` (as HF does, so
                left-padded rows start at 0), or `T + arange(L)` without a mask.
            cache: A `KVCache` to read from and append to, or a `StaticKVCache` to write into.
            use_cache: Create a new (dynamic) cache when `cache` is None.
            cache_position: (L,) slots of a `StaticKVCache` to write the new tokens at, instead
                of those after its `seq_len` (a captured decode step passes a fixed tensor);
                `attention_mask` must then be None (the cache's `slot_mask` is used).

        Returns:
            `DecoderOutput(logits (B, L, V) float, cache or None)`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.model.embed_tokens(input_ids)
        if cache is None and use_cache:
            cache = KVCache()
        mask, position_ids = mask_and_positions(
            inputs_embeds, cache, attention_mask, position_ids, cache_position
        )
        x = inputs_embeds
        cos, sin = self.model.rotary_emb(position_ids, x.dtype)  # (B, 1, L, Dh)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask, cache)
        logits = self.lm_head(self.model.norm(x)).float()  # (B, L, V)
        return DecoderOutput(logits=logits, cache=cache)


def mask_and_positions(
    inputs_embeds: torch.Tensor,
    cache: KVCache | StaticKVCache | None,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    cache_position: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The SDPA mask and (B, L) RoPE positions for new tokens `inputs_embeds` (B, L, D).

    Shared by `DecoderLM` and the fusion decoders; the arguments are `DecoderLM.forward`'s.
    A `StaticKVCache` builds a fixed-shape (B, 1, L, S) mask over all its slots from tensors
    only; otherwise the mask covers the cached plus new positions (None where SDPA's
    `is_causal` suffices).
    """
    b, n, _ = inputs_embeds.shape
    if isinstance(cache, StaticKVCache):
        return cache.prepare(n, attention_mask, position_ids, cache_position)
    if cache_position is not None:
        raise ValueError("cache_position needs a StaticKVCache")
    past = cache.seq_len if cache is not None else 0
    device = inputs_embeds.device
    if attention_mask is not None and attention_mask.shape[1] != past + n:
        raise ValueError(
            f"attention_mask has {attention_mask.shape[1]} columns, expected cached + new = {past + n}"
        )
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask, b, n, past, device)
    return attention_mask_4d(attention_mask, b, n, past, device), position_ids


def position_ids_from_mask(
    attention_mask: torch.Tensor | None, b: int, n: int, past: int, device: torch.device
) -> torch.Tensor:
    """(B, L) RoPE positions of the new tokens: `cumsum(mask) - 1` (HF; left-padded rows start
    at 0) or `past + t` without a mask. Shared by `DecoderLM` and the fusion decoders.

    Args:
        attention_mask: (B, past + L) padding mask (1 = keep), or None.
    """
    if attention_mask is None:
        return torch.arange(past, past + n, device=device).expand(b, n)
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)[:, past:]  # (B, L)


def attention_mask_4d(
    attention_mask: torch.Tensor | None, b: int, n: int, past: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean (B, 1, L, past + L) causal + padding mask (True = attend) for SDPA.

    None when SDPA's `is_causal` suffices (no padding and no cache, or one query over the whole
    cache). Query i sits at cache slot `past + i`; every query sees its own slot, so padding rows
    never produce NaN (their outputs are garbage but never read by real tokens).
    """
    if attention_mask is None and (past == 0 or n == 1):
        return None
    total = past + n
    q_slot = torch.arange(past, total, device=device)[:, None]  # (L, 1)
    k_slot = torch.arange(total, device=device)[None, :]  # (1, T)
    mask = (k_slot <= q_slot)[None, None]  # (1, 1, L, T)
    if attention_mask is not None:
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        mask = (mask & keep) | (k_slot == q_slot)[None, None]
    return mask.expand(b, 1, n, total)


def config_from_hf_llama(hf_config: Mapping[str, Any]) -> DecoderConfig:
    """Build a `DecoderConfig` from a Hugging Face `LlamaConfig` dict (`config.json` / `to_dict()`).

    Raises:
        NotImplementedError: For RoPE scaling variants other than the default (e.g. "llama3").
    """
    rope = hf_config.get("rope_scaling") or hf_config.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise NotImplementedError(f"RoPE scaling {rope_type!r} is not supported")
    theta = hf_config.get("rope_theta") or rope.get("rope_theta") or 10000.0
    heads = hf_config["num_attention_heads"]
    return DecoderConfig(
        vocab_size=hf_config["vocab_size"],
        hidden_size=hf_config["hidden_size"],
        intermediate_size=hf_config["intermediate_size"],
        num_layers=hf_config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf_config.get("num_key_value_heads") or heads,
        head_dim=hf_config.get("head_dim"),
        rope_theta=float(theta),
        rms_norm_eps=hf_config.get("rms_norm_eps", 1e-6),
        max_position_embeddings=hf_config.get("max_position_embeddings", 2048),
        tie_word_embeddings=hf_config.get("tie_word_embeddings", False),
        attention_bias=hf_config.get("attention_bias", False),
        mlp_bias=hf_config.get("mlp_bias", False),
    )


def from_hf_llama_state_dict(
    state: Mapping[str, torch.Tensor], config: DecoderConfig, prefix: str = ""
) -> DecoderLM:
    """Build a `DecoderLM` and load a Hugging Face `LlamaForCausalLM` state dict into it.

    Args:
        state: HF parameter names (`model.layers.0.self_attn.q_proj.weight`, `lm_head.weight`).
        config: Matching config (see `config_from_hf_llama`).
        prefix: Stripped from keys first, e.g. "model.text_model." inside a VLM checkpoint; keys
            without it are ignored, except a top-level `lm_head.weight` (Idefics3/SmolVLM layout:
            `model.text_model.*` plus `lm_head.weight`).

    Returns:
        The model with loaded weights (strict: every parameter must be present).
    """
    sd: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("rotary_emb.inv_freq") or not key.startswith((prefix, "lm_head.")):
            continue
        key = key[len(prefix) :] if key.startswith(prefix) else key
        if not key.startswith(("model.", "lm_head.")):
            key = "model." + key  # a bare LlamaModel state dict
        sd[key] = value
    if config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    model = DecoderLM(config)
    model.load_state_dict(sd, strict=True)
    return model
