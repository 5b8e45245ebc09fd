"""Flamingo's language model: a decoder with gated cross-attention blocks between its layers.

Alayrac et al. 2022, "Flamingo: a Visual Language Model for Few-Shot Learning":

* Sec. 2.2 / Fig. 4: a `GatedCrossAttentionBlock` (tanh gates initialised at 0) precedes decoder
  layer i whenever `i % cross_attention_every == 0`; at initialisation the decoder is exactly
  the text-only LM.
* Sec. 2.3: each token cross-attends only to the latents of the most recent `<image>` at or
  before it; tokens before any image get no cross-attention.

The text weights keep `DecoderLM`'s (Llama) parameter names. `FlamingoVLM` (flamingo.py) feeds
it the Perceiver-resampled images as a `flamingo_cache.MediaCache`.
"""

from __future__ import annotations

import torch
from torch import nn

from vlkit.fusion.gated_cross_attention import GatedCrossAttentionBlock, media_time_index
from vlkit.models.decoder import DecoderConfig, DecoderLM, DecoderOutput, KVCache, StaticKVCache
from vlkit.models.flamingo_cache import FlamingoKVCache, MediaCache

__all__ = ["FlamingoDecoder"]


class FlamingoDecoder(DecoderLM):
    """`DecoderLM` with a gated cross-attention block before every `cross_attention_every` layers.

    Args:
        config: Decoder shape; the cross-attention uses its width and head count.
        cross_attention_every: Block before layer i iff `i % cross_attention_every == 0`.
    """

    def __init__(self, config: DecoderConfig, cross_attention_every: int = 1) -> None:
        super().__init__(config)
        d = config.hidden_size
        self.gated_cross_attention = nn.ModuleDict(
            {
                str(i): GatedCrossAttentionBlock(d, d, num_heads=config.num_heads, ff_mult=4)
                for i in range(config.num_layers)
                if i % cross_attention_every == 0
            }
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | StaticKVCache | None = None,
        use_cache: bool = False,
        cache_position: torch.Tensor | None = None,
        media: MediaCache | None = None,
    ) -> DecoderOutput:
        """Logits for text interleaved with images, optionally continuing from a cache.

        Args:
            input_ids: (B, L) new token ids (needed even with `inputs_embeds`: the `<image>`
                markers select the media).
            inputs_embeds: (B, L, D) embeddings used instead of embedding `input_ids`.
            attention_mask, position_ids, cache, use_cache, cache_position: As
                `DecoderLM.forward`; `use_cache` creates a `FlamingoKVCache`.
            media: The batch's `MediaCache`; None = the one of a `FlamingoKVCache` `cache`, or
                text only when there is none (every token is then a token before any image: no
                cross-attention, the gated FFWs still run). Without a cache each token's media
                time counts the markers in `input_ids`; with one it continues from `media.time`
                (which then advances).

        Returns:
            `DecoderOutput` with (B, L, V) logits and the cache.
        """
        if media is None:
            media = getattr(cache, "media", None)
        if media is not None and input_ids is None:
            raise ValueError("FlamingoDecoder needs input_ids (its <image> markers place media)")
        x, cos, sin, mask, cache = self.prepare_inputs(
            input_ids if inputs_embeds is None else None,
            inputs_embeds,
            attention_mask,
            position_ids,
            cache,
            use_cache,
            cache_position,
            new_cache=KVCache if media is None else lambda: FlamingoKVCache(media),
        )  # mask (B, 1, L, T) or None
        time = None
        if media is not None:
            # Media time (B, L): the most recent <image> at or before each token (Sec. 2.3).
            if cache is None:
                time = media_time_index(input_ids == media.image_token_id)
            else:
                time = media.advance(input_ids)
        for i, layer in enumerate(self.model.layers):
            if str(i) in self.gated_cross_attention:  # GATED XATTN-DENSE, then the layer (Fig. 4)
                block = self.gated_cross_attention[str(i)]
                if media is None or time is None:
                    x = block.forward_without_media(x)
                else:
                    allowed = block.media_time_mask(time, media.num_media, media.tokens_per_media)
                    x = block.forward_projected(x, media.keys_values[str(i)], allowed)
            x = layer(x, cos, sin, mask, cache)
        return self.output(x, cache)
