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
)
from vlkit.models.splicing_vlm import SplicingVLM

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
        image_mask: torch.Tensor | None = None,
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
        q, k, v = self.project(self.input_layernorm(x), cos, sin, image_mask)
        out = self.self_attn.attend(q, k, v, mask, cache)  # (B, L, H*Dh), shared by both
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
        x, cos, sin, mask, cache = self.prepare_inputs(
            input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache
        )
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask, cache, image_mask)
        return self.output(x, cache)


class CogVLM(SplicingVLM):
    """Vision tokens -> projector -> spliced at placeholders -> `CogVLMDecoder` (visual expert).

    Args: as `SplicingVLM`, with a `CogVLMDecoder`. The token types (`image_mask`) reach the
    decoder through `decoder_inputs`, so `forward`, `generate` and `attention_maps` are
    `SplicingVLM`'s.
    """

    decoder: CogVLMDecoder

    def decoder_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The (B, L) token types: True at `<image>` positions (routed to the visual expert)."""
        return {"image_mask": input_ids == self.image_token_id}

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        pixel_attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        eos_token_id: int | Sequence[int] | None = None,
        streamer: Callable[[torch.Tensor], None] | None = None,
        cache_implementation: str = "dynamic",
        **kwargs: Any,
    ) -> torch.Tensor:
        """KV-cached decoding, as `GenerativeVLM.generate`; returns (B, P + N) ids.

        Greedy, sampling and beam search (the prompt call routes the prompt's image positions to
        the expert; new tokens are text).

        Args:
            input_ids, pixel_values, attention_mask, pixel_attention_mask, max_new_tokens,
                do_sample, eos_token_id, streamer, **kwargs: As `GenerativeVLM.generate`.
            cache_implementation: Only "dynamic": the static cache / CUDA-graph decoding has no
                token-type routing.

        Raises:
            NotImplementedError: For any other `cache_implementation`.
        """
        if cache_implementation != "dynamic":
            raise NotImplementedError("CogVLM generates with the dynamic KV cache only")
        return super().generate(
            input_ids,
            pixel_values,
            attention_mask,
            pixel_attention_mask=pixel_attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            eos_token_id=eos_token_id,
            streamer=streamer,
            **kwargs,
        )
