"""Llama-style decoder-only language model (Touvron et al. 2023), the text model of generative VLMs.

Pre-norm blocks: RMSNorm (Zhang & Sennrich 2019) -> grouped-query self-attention (GQA, Ainslie et
al. 2023) with rotary position embeddings (RoPE, Su et al. 2021, in the "rotate_half" layout of
Hugging Face Llama) -> RMSNorm -> SwiGLU MLP (Shazeer 2020). Parameter names equal Hugging Face
`LlamaForCausalLM`'s (`model.layers.N.self_attn.q_proj.weight`, ...), so loading a checkpoint is a
near-identity mapping (`vlkit.hub.hf_llama`). `forward` accepts `inputs_embeds` so that a VLM
can splice image embeddings into the token sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.layers.checkpointing import checkpoint_modules
from vlkit.models.decoder.config import DecoderConfig, DecoderOutput
from vlkit.models.decoder.kv_cache import KVCache, StaticKVCache
from vlkit.models.decoder.masks import mask_and_positions
from vlkit.models.decoder.rope import RotaryEmbedding

__all__ = [
    "MLP",
    "Attention",
    "DecoderLM",
    "DecoderLayer",
    "DecoderModel",
    "RMSNorm",
    "RotaryEmbedding",
    "apply_rotary",
    "rotate_half",
]


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
        d, bias = config.hidden_size, config.qkv_bias
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=config.attention_bias)
        if config.qk_norm:  # Qwen3: per-head RMSNorm of queries and keys (modeling_qwen3.py)
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated queries (B, H, L, Dh) and keys, values (B, H_kv, L, Dh) of x (B, L, D)."""
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | StaticKVCache | None,
    ) -> torch.Tensor:
        """x (B, L, D); mask (B, 1, L, T) bool (True = attend) or None for plain causal."""
        return self.o_proj(self.attend(*self.project(x, cos, sin), mask, cache))

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | StaticKVCache | None,
    ) -> torch.Tensor:
        """Projected q (B, H, L, Dh), new k, v (B, H_kv, L, Dh) -> (B, L, H*Dh) before `o_proj`.

        Appends k, v to the cache first, so the L queries attend over cached plus new keys.
        """
        b, _, n, _ = q.shape
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, H_kv, T, Dh)
        groups = self.num_heads // self.num_kv_heads
        # Without a mask SDPA shares each key/value head across `groups` query heads itself
        # (`enable_gqa`, no copies; transformers' `use_gqa_in_sdpa` makes the same choice);
        # with a mask some backends fall back to the math kernel on GQA, so repeat them.
        gqa = groups > 1 and mask is None
        if groups > 1 and not gqa:
            k = k.repeat_interleave(groups, dim=1)  # (B, H, T, Dh)
            v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and n > 1, enable_gqa=gqa
        )  # (B, H, L, Dh)
        return out.transpose(1, 2).reshape(b, n, -1)


# transformers' ACT2FN entries for the names its Llama-family configs use.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class MLP(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020): down(silu(gate(x)) * up(x)) (another gate activation
    with `config.hidden_act`)."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        if config.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act {config.hidden_act!r} is not supported (supported: {', '.join(ACTIVATIONS)})"
            )
        self.act = ACTIVATIONS[config.hidden_act]
        d, h, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(d, h, bias=bias)
        self.up_proj = nn.Linear(d, h, bias=bias)
        self.down_proj = nn.Linear(h, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


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

    def project(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The self-attention's q, k, v of normed states h (B, L, D) (see `Attention.project`)."""
        return self.self_attn.project(h, cos, sin)


class DecoderModel(nn.Module):
    """Embedding, decoder layers and final norm (HF `LlamaModel`); returns hidden states."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(
            config.head_dim, config.rope_theta, config.rope_scaling, config.max_position_embeddings
        )


class DecoderLM(nn.Module):
    """Causal language model: (input ids or embeddings) -> next-token logits, with a KV cache."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DecoderModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    # The format layer (`vlkit.hub`) sits above the models: it installs its writer here
    # (`hf_causal_lm.save_causal_lm`) when imported, as for `CLIP.save_pretrained`.
    checkpoint_writer: ClassVar[Callable[[DecoderLM, str | Path], None] | None] = None

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes a transformers Llama / Qwen2 / Qwen3 directory (`vlkit.hub.hf_causal_lm`)."""
        writer = DecoderLM.checkpoint_writer
        if writer is None:
            raise RuntimeError("saving checkpoints needs vlkit.hub: `import vlkit.hub` first")
        writer(self, directory)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each decoder layer's activations in the backward pass (training only;
        `vlkit.layers.checkpointing`). Covers subclasses whose layers are `model.layers`."""
        checkpoint_modules(self.model.layers, enabled)

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
        return_hidden: bool = False,
    ) -> DecoderOutput:
        """Run the decoder on new tokens, optionally continuing from a cache.

        Args:
            input_ids: (B, L) token ids; exactly one of `input_ids` / `inputs_embeds`.
            inputs_embeds: (B, L, D) input embeddings (e.g. text with image features spliced in).
            attention_mask: (B, T + L) padding mask over cached plus new positions, 1 = keep,
                0 = padding (left padding for batched generation). May also be (B, L) when the
                cache is empty. None means no padding.
            position_ids: (B, L) (or (1, L)) RoPE positions of the new tokens; by default
                `T + arange(L)` whatever the mask (transformers' `LlamaModel.forward`: the mask
                only hides keys). `generate` passes positions that follow the mask
                (`masks.position_ids_from_mask`), as transformers' `generate` does.
            cache: A `KVCache` to read from and append to, or a `StaticKVCache` to write into.
            use_cache: Create a new (dynamic) cache when `cache` is None.
            cache_position: (L,) slots of a `StaticKVCache` to write the new tokens at, instead
                of those after its `seq_len` (a captured decode step passes a fixed tensor);
                `attention_mask` must then be None (the cache's `slot_mask` is used).
            return_hidden: Return the final (normed) hidden states instead of the logits, for a
                caller that needs the LM head at a few positions only (a loss over answer
                tokens: `vlkit.losses.next_token_loss_from_hidden`).

        Returns:
            `DecoderOutput(logits (B, L, V) float, cache or None)`; with `return_hidden`,
            `logits` is None and `hidden_states` (B, L, D) is set.
        """
        x, cos, sin, mask, cache = self.prepare_inputs(
            input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, cache_position
        )
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask, cache)
        if return_hidden:
            return DecoderOutput(logits=None, cache=cache, hidden_states=self.model.norm(x))
        return self.output(x, cache)

    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Prompt plus new tokens, (B, P + N); see `vlkit.models.decoder.generation.generate`.

        `eos_token_id` and `pad_token_id` default to the config's (a pretrained LM's
        `generation_config.json`), as transformers' `generate` reads them.
        """
        from vlkit.models.decoder.generation import generate  # generation imports this module

        kwargs.setdefault("eos_token_id", self.config.eos_token_id)
        kwargs.setdefault("pad_token_id", self.config.pad_token_id)
        return generate(
            self,
            input_ids,
            max_new_tokens,
            do_sample=do_sample,
            attention_mask=attention_mask,
            **kwargs,
        )

    def prepare_inputs(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: KVCache | StaticKVCache | None,
        use_cache: bool,
        cache_position: torch.Tensor | None = None,
        new_cache: Callable[[], KVCache] = KVCache,
    ) -> tuple[
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor | None,
        KVCache | StaticKVCache | None,
    ]:
        """What every decoder layer reads: embeddings, RoPE tables, mask and cache.

        The preamble of this `forward` and of the decoders that change its layers (CogVLM's
        visual expert, Flamingo's gated cross-attention); the arguments are `forward`'s.

        Args:
            new_cache: Makes the cache when `use_cache` and `cache` is None (a `KVCache`
                subclass may carry more state, e.g. Flamingo's media).

        Returns:
            x (B, L, D) input embeddings, cos and sin (B, 1, L, Dh), the SDPA mask (B, 1, L, T)
            or None, and the cache (None without one).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.model.embed_tokens(input_ids)
        if cache is None and use_cache:
            cache = new_cache()
        mask, position_ids = mask_and_positions(
            inputs_embeds, cache, attention_mask, position_ids, cache_position
        )
        cos, sin = self.model.rotary_emb(position_ids, inputs_embeds.dtype)  # (B, 1, L, Dh)
        return inputs_embeds, cos, sin, mask, cache

    def output(
        self, x: torch.Tensor, cache: KVCache | StaticKVCache | None = None
    ) -> DecoderOutput:
        """Final norm and LM head: last hidden states (B, L, D) -> (B, L, V) float logits."""
        return DecoderOutput(logits=self.logits_from_hidden(self.model.norm(x)), cache=cache)

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head on final (normed) hidden states (..., D) -> float logits (..., V)."""
        return self.lm_head(hidden).float()
