"""OPT (Zhang et al. 2022, "OPT: Open Pre-trained Transformer Language Models"): the frozen LM of
the released BLIP-2 checkpoints (`Salesforce/blip2-opt-2.7b`, ...).

A GPT-style decoder, unlike the Llama-style `DecoderLM`: learned absolute positions, LayerNorm,
ReLU MLP, biases everywhere. Ported from transformers 5.25 `models/opt/modeling_opt.py`:

* Positions are learned embeddings indexed with an offset of 2 (fairseq reserved ids 0-1 for
  padding), and a forward without `position_ids` derives them from the attention mask,
  `cumsum(mask) * mask - 1` (`OPTLearnedPositionalEmbedding`), so left padding and holes in the
  mask do not advance the position (a masked column gets index -1 + 2 = 1).
* `do_layer_norm_before=False` (opt-350m) is a post-LayerNorm block without a final norm.
* `word_embed_proj_dim != hidden_size` (opt-350m) embeds tokens in a narrower space:
  `project_in` widens them before the blocks, `project_out` narrows the output before the tied
  LM head.

`OPTLM` has `DecoderLM`'s interface (`forward(input_ids | inputs_embeds, attention_mask,
position_ids, cache, use_cache, cache_position) -> DecoderOutput`, `get_input_embeddings`, a
config with `num_layers` / `num_kv_heads` / `head_dim` for `StaticKVCache`), so
`generation.generate` and the splicing VLMs drive it unchanged. Parameter names follow HF's
(`model.decoder.` shortened to `model.`), so `vlkit.hub.hf_opt` is a prefix rename.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.models.decoder.config import DecoderOutput
from vlkit.models.decoder.kv_cache import KVCache, StaticKVCache
from vlkit.models.decoder.masks import mask_and_positions

__all__ = ["OPTConfig", "OPTLM"]

# fairseq kept embedding ids 0 and 1 for padding, so position p is row p + 2 of the table.
POSITION_OFFSET = 2


@dataclass
class OPTConfig:
    """Shape of an OPT decoder (field names as in transformers' `OPTConfig`).

    Attributes:
        word_embed_proj_dim: Width of the token embeddings and the LM head; `hidden_size`
            when None. A different width adds `project_in` / `project_out`.
        do_layer_norm_before: Pre-LayerNorm blocks plus a final norm (True, all sizes but
            350m), or post-LayerNorm blocks without a final norm (False, 350m).
        enable_bias: Biases on the attention and MLP projections.
        activation_function: "relu" in every released size.
    """

    vocab_size: int = 50272
    hidden_size: int = 768
    num_hidden_layers: int = 12
    ffn_dim: int = 3072
    num_attention_heads: int = 12
    max_position_embeddings: int = 2048
    word_embed_proj_dim: int | None = None
    do_layer_norm_before: bool = True
    remove_final_layer_norm: bool = False
    enable_bias: bool = True
    layer_norm_elementwise_affine: bool = True
    activation_function: str = "relu"
    tie_word_embeddings: bool = True
    layer_norm_eps: float = 1e-5
    # Special tokens of the checkpoint (informational; `generate` takes them as arguments).
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.word_embed_proj_dim is None:
            self.word_embed_proj_dim = self.hidden_size
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.activation_function not in _ACTIVATIONS:
            raise ValueError(
                f"activation_function {self.activation_function!r} is not one of {sorted(_ACTIVATIONS)}"
            )

    # The names `StaticKVCache` and `generation` read from `DecoderConfig`.
    @property
    def num_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


class OPTAttention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections and no rotary embedding."""

    def __init__(self, config: OPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        d, bias = config.hidden_size, config.enable_bias
        self.q_proj = nn.Linear(d, d, bias=bias)
        self.k_proj = nn.Linear(d, d, bias=bias)
        self.v_proj = nn.Linear(d, d, bias=bias)
        self.out_proj = nn.Linear(d, d, bias=bias)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | StaticKVCache | None
    ) -> torch.Tensor:
        """x (B, L, D); mask (B, 1, L, T) bool (True = attend) or None for plain causal."""
        b, n, _ = x.shape
        q, k, v = (
            proj(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, H, T, Dh)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and n > 1
        )  # (B, H, L, Dh)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class OPTDecoderLayer(nn.Module):
    """x + attn(LN(x)), x + fc2(relu(fc1(LN(x)))); with the norms after the residual sums when
    `do_layer_norm_before` is False (opt-350m)."""

    def __init__(self, config: OPTConfig, layer_idx: int) -> None:
        super().__init__()
        d, affine = config.hidden_size, config.layer_norm_elementwise_affine
        eps = config.layer_norm_eps
        self.pre_norm = config.do_layer_norm_before
        self.self_attn = OPTAttention(config, layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=eps, elementwise_affine=affine)
        self.fc1 = nn.Linear(d, config.ffn_dim, bias=config.enable_bias)
        self.fc2 = nn.Linear(config.ffn_dim, d, bias=config.enable_bias)
        self.final_layer_norm = nn.LayerNorm(d, eps=eps, elementwise_affine=affine)
        self.activation = _ACTIVATIONS[config.activation_function]

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | StaticKVCache | None
    ) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D)."""
        h = self.self_attn(self.self_attn_layer_norm(x) if self.pre_norm else x, mask, cache)
        x = x + h
        if not self.pre_norm:
            x = self.self_attn_layer_norm(x)
        h = self.final_layer_norm(x) if self.pre_norm else x
        x = x + self.fc2(self.activation(self.fc1(h)))
        return x if self.pre_norm else self.final_layer_norm(x)


class OPTDecoder(nn.Module):
    """Token and position embeddings, the blocks, the final norm and projections (HF
    `OPTDecoder`); the LM head lives in `OPTLM`."""

    def __init__(self, config: OPTConfig) -> None:
        super().__init__()
        d, e = config.hidden_size, config.word_embed_proj_dim
        assert e is not None  # set by OPTConfig.__post_init__
        self.embed_tokens = nn.Embedding(config.vocab_size, e)
        self.embed_positions = nn.Embedding(config.max_position_embeddings + POSITION_OFFSET, d)
        self.project_in = nn.Linear(e, d, bias=False) if e != d else None
        self.project_out = nn.Linear(d, e, bias=False) if e != d else None
        self.layers = nn.ModuleList(
            OPTDecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        final = config.do_layer_norm_before and not config.remove_final_layer_norm
        self.final_layer_norm = (
            nn.LayerNorm(
                d,
                eps=config.layer_norm_eps,
                elementwise_affine=config.layer_norm_elementwise_affine,
            )
            if final
            else None
        )


class OPTLM(nn.Module):
    """OPT causal LM: (input ids or embeddings) -> next-token logits, with a KV cache.

    The counterpart of `DecoderLM` (same `forward` arguments and output), so `generate`, the
    static cache and `GenerativeVLM` use it as they use the Llama-style decoder.
    """

    def __init__(self, config: OPTConfig) -> None:
        super().__init__()
        self.config = config
        self.model = OPTDecoder(config)
        self.lm_head = nn.Linear(config.word_embed_proj_dim, config.vocab_size, bias=False)  # type: ignore[arg-type]
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def get_input_embeddings(self) -> nn.Embedding:
        """The (V, word_embed_proj_dim) token table: VLMs splice image features into its output."""
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

        Args: as `DecoderLM.forward`, except the default positions: without `position_ids` they
        follow `attention_mask` (`cumsum(mask) * mask - 1` over cached plus new columns, HF's
        `OPTLearnedPositionalEmbedding`), and `past + arange(L)` without a mask. `inputs_embeds`
        are (B, L, word_embed_proj_dim), before `project_in`.

        Returns:
            `DecoderOutput(logits (B, L, V) float, cache or None)`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        decoder = self.model
        if inputs_embeds is None:
            inputs_embeds = decoder.embed_tokens(input_ids)
        if cache is None and use_cache:
            cache = KVCache()
        if position_ids is None and attention_mask is not None and cache_position is None:
            # OPTLearnedPositionalEmbedding: positions count the real columns so far.
            mask = attention_mask.long()
            position_ids = (mask.cumsum(-1) * mask - 1)[:, -inputs_embeds.shape[1] :]  # (B, L)
        mask4d, position_ids = mask_and_positions(
            inputs_embeds, cache, attention_mask, position_ids, cache_position
        )
        x = inputs_embeds
        if decoder.project_in is not None:
            x = decoder.project_in(x)  # (B, L, D)
        x = x + decoder.embed_positions(position_ids + POSITION_OFFSET).to(x.dtype)
        for layer in decoder.layers:
            x = layer(x, mask4d, cache)
        if decoder.final_layer_norm is not None:
            x = decoder.final_layer_norm(x)
        if decoder.project_out is not None:
            x = decoder.project_out(x)  # (B, L, word_embed_proj_dim)
        return DecoderOutput(logits=self.lm_head(x).float(), cache=cache)
