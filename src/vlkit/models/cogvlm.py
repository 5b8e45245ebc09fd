"""CogVLM: a Llama decoder with a visual expert in every layer (Wang et al. 2023, Sec. 2.1).

LLaVA-style splicing (a projector per vision token, T `<image>` placeholders per image), but each
decoder layer holds a second copy of its QKV / output projections and of its FFN, applied at the
image positions (token-type routing):

    Q = [X_I W_Q^I ; X_T W_Q],  K, V likewise,  Attention over the whole (causal) sequence,
    FFN(X) = [FFN_I(X_I) ; FFN(X_T)],

with shared RMSNorms and the base decoder's RoPE. The text weights keep `DecoderLM`'s parameter
names (so a Llama checkpoint loads into them); the experts are `vision_expert_attn` (an
`Attention`, of which only the projections are used) and `vision_expert_mlp`, initialised as
copies of the text weights (`copy_text_to_expert`, as the paper initialises them from the LM).
Generated tokens are text, so cached generation routes the prompt's image positions to the
expert once (prefill) and every new token to the text weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.models.decoder import (
    MLP,
    Attention,
    DecoderConfig,
    DecoderLayer,
    DecoderLM,
    DecoderOutput,
    KVCache,
    apply_rotary,
    mask_and_positions,
)
from vlkit.models.generation import generate as _generate
from vlkit.models.smolvlm import VLMOutput
from vlkit.models.spliced_lm import (
    SplicingVLM,
    attention_mask_4d,
    attention_probs,
    position_ids_from_mask,
)

__all__ = ["CogVLM", "CogVLMDecoder", "VisualExpertDecoderLayer", "route"]


def route(
    x: torch.Tensor,
    image_mask: torch.Tensor | None,
    text_fn: Callable[[torch.Tensor], torch.Tensor],
    image_fn: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Apply `text_fn` at text positions and `image_fn` at image positions of (B, L, D_in).

    Args:
        image_mask: (B, L) bool, True at image positions; None = all text.

    Returns:
        (B, L, D_out).
    """
    if image_mask is None or not bool(image_mask.any()):
        return text_fn(x)
    y_text = text_fn(x[~image_mask])  # (n_text, D_out)
    out = y_text.new_empty(*image_mask.shape, y_text.shape[-1])  # (B, L, D_out)
    out[~image_mask] = y_text
    out[image_mask] = image_fn(x[image_mask]).to(out.dtype)
    return out


class VisualExpertDecoderLayer(DecoderLayer):
    """`DecoderLayer` with a visual expert: separate QKV/output and FFN weights for image tokens."""

    def __init__(self, config: DecoderConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.vision_expert_attn = Attention(config, layer_idx)
        self.vision_expert_mlp = MLP(config)
        self.copy_text_to_expert()

    @torch.no_grad()
    def copy_text_to_expert(self) -> None:
        """Set the expert weights to copies of the text weights (Wang et al. 2023, Sec. 2.1)."""
        self.vision_expert_attn.load_state_dict(self.self_attn.state_dict())
        self.vision_expert_mlp.load_state_dict(self.mlp.state_dict())

    def project(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        image_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Routed, rotated q (B, H, L, Dh) and k, v (B, H_kv, L, Dh) of normed states (B, L, D)."""
        text, expert = self.self_attn, self.vision_expert_attn
        b, n, _ = h.shape
        hd, heads, kv_heads = text.head_dim, text.num_heads, text.num_kv_heads
        q = route(h, image_mask, text.q_proj, expert.q_proj).view(b, n, heads, hd).transpose(1, 2)
        k = route(h, image_mask, text.k_proj, expert.k_proj).view(b, n, kv_heads, hd)
        v = route(h, image_mask, text.v_proj, expert.v_proj).view(b, n, kv_heads, hd)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D); `image_mask` (B, L) routes positions to the expert."""
        b, n, _ = x.shape
        q, k, v = self.project(self.input_layernorm(x), cos, sin, image_mask)
        if cache is not None:
            k, v = cache.update(self.self_attn.layer_idx, k, v)  # (B, H_kv, T, Dh)
        groups = self.self_attn.num_heads // self.self_attn.num_kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)  # (B, H, T, Dh)
            v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and n > 1
        )  # (B, H, L, Dh)
        out = out.transpose(1, 2).reshape(b, n, -1)  # (B, L, H*Dh)
        x = x + route(out, image_mask, self.self_attn.o_proj, self.vision_expert_attn.o_proj)
        h = self.post_attention_layernorm(x)
        return x + route(h, image_mask, self.mlp, self.vision_expert_mlp)


class CogVLMDecoder(DecoderLM):
    """`DecoderLM` whose layers are `VisualExpertDecoderLayer`s; `forward` takes `image_mask`."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__(config)
        self.model.layers = nn.ModuleList(
            VisualExpertDecoderLayer(config, i) for i in range(config.num_layers)
        )

    def copy_text_to_expert(self) -> None:
        """Reset every layer's expert to a copy of its text weights."""
        for layer in self.model.layers:
            layer.copy_text_to_expert()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
        image_mask: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """As `DecoderLM.forward`, plus `image_mask` (B, L) bool for the new positions."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.model.embed_tokens(input_ids)
        if cache is None and use_cache:
            cache = KVCache()
        mask, position_ids = mask_and_positions(
            inputs_embeds, cache, attention_mask, position_ids, None
        )
        x = inputs_embeds
        cos, sin = self.model.rotary_emb(position_ids, x.dtype)  # (B, 1, L, Dh)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask, cache, image_mask)
        logits = self.lm_head(self.model.norm(x)).float()  # (B, L, V)
        return DecoderOutput(logits=logits, cache=cache)

    @torch.no_grad()
    def attention_probs(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        image_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """(B, L, L) head-averaged last-layer self-attention (expert-routed queries and keys)."""
        b, n, _ = inputs_embeds.shape
        device = inputs_embeds.device
        keep = attention_mask if attention_mask is not None else torch.ones(b, n, device=device)
        mask = attention_mask_4d(keep, b, n, 0, device)  # (B, 1, L, L)
        positions = position_ids_from_mask(attention_mask, b, n, 0, device)
        x = inputs_embeds
        cos, sin = self.model.rotary_emb(positions, x.dtype)
        for layer in self.model.layers[:-1]:
            x = layer(x, cos, sin, mask, None, image_mask)
        last = self.model.layers[-1]
        q, k, _ = last.project(last.input_layernorm(x), cos, sin, image_mask)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (B, H, L, Dh)
        return attention_probs(q, k, mask)


class _PrefillImageMask(nn.Module):
    """Adapts `CogVLMDecoder` to `generation.generate`: the prefill call gets the image mask."""

    def __init__(self, decoder: CogVLMDecoder, image_mask: torch.Tensor) -> None:
        super().__init__()
        self.decoder = decoder
        self.image_mask = image_mask  # (B, P)

    def forward(self, **kwargs: Any) -> DecoderOutput:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:  # a decode step: new tokens are text
            return self.decoder(**kwargs)
        image_mask = self.image_mask
        if image_mask.shape[0] != embeds.shape[0]:  # beam search repeats each row k times
            image_mask = image_mask.repeat_interleave(embeds.shape[0] // image_mask.shape[0], 0)
        return self.decoder(**kwargs, image_mask=image_mask)


class CogVLM(SplicingVLM):
    """Vision tokens -> projector -> spliced at placeholders -> `CogVLMDecoder` (visual expert).

    Args: as `SplicingVLM`, with a `CogVLMDecoder`.
    """

    decoder: CogVLMDecoder

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = False,
    ) -> VLMOutput:
        """Logits (B, L, V) for ids (B, L) with placeholders; see `GenerativeVLM.forward`."""
        embeds, features = self.embed(input_ids, pixel_values, pixel_attention_mask)
        image_mask = input_ids == self.image_token_id  # (B, L) token types
        out = self.decoder(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            use_cache=use_cache,
            image_mask=image_mask,
        )
        return VLMOutput(logits=out.logits, cache=out.cache, image_features=features)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        eos_token_id: int | Sequence[int] | None = None,
        streamer: Callable[[torch.Tensor], None] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """KV-cached decoding, as `GenerativeVLM.generate`; returns (B, P + N) ids.

        Greedy, sampling and beam search (the prefill routes the prompt's image positions to the
        expert); `cache_implementation="static"` is not supported (raises NotImplementedError).
        """
        if kwargs.get("cache_implementation", "dynamic") != "dynamic":
            raise NotImplementedError("CogVLM generates with the dynamic KV cache only")
        embeds, _ = self.embed(input_ids, pixel_values, pixel_attention_mask)
        stepper = _PrefillImageMask(self.decoder, input_ids == self.image_token_id)
        return _generate(
            stepper,  # type: ignore[arg-type]
            input_ids,
            max_new_tokens,
            do_sample=do_sample,
            eos_token_id=eos_token_id,
            attention_mask=attention_mask,
            inputs_embeds=embeds,
            streamer=streamer,
            **kwargs,
        )

    def _lm_attention(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        image_mask = input_ids == self.image_token_id
        return self.decoder.attention_probs(inputs_embeds, attention_mask, image_mask)
