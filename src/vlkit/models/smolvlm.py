"""Generative vision-language model: vision encoder -> connector -> decoder-only LM.

The LLaVA / Idefics3 / SmolVLM recipe (Liu et al. 2023; Laurençon et al. 2024): images are encoded
into tokens, a connector maps them to the LM width, and the resulting features replace the
embeddings of the `<image>` placeholder tokens of the prompt, in order. Inputs follow transformers'
conventions: `pixel_values` is (B, num_images, C, H, W) with all-zero padding images for rows that
have fewer images, and `pixel_attention_mask` (B, num_images, H, W) marks real pixels of padded
images. Any vision encoder that returns (N, T, Dv) tokens and any connector (N, T, Dv) ->
(N, T', D) can be combined with a `DecoderLM`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vlkit.models.decoder import DecoderLM, KVCache
from vlkit.models.generation import generate as _generate


@dataclass
class VLMOutput:
    """Result of `GenerativeVLM.forward`.

    Attributes:
        logits: (B, L, V) next-token logits.
        cache: The decoder's `KVCache` when `use_cache`, else None.
        image_features: (I, D) features spliced into the prompt (I = image tokens), or None.
    """

    logits: torch.Tensor
    cache: KVCache | None = None
    image_features: torch.Tensor | None = None


class GenerativeVLM(nn.Module):
    """Vision encoder + connector + decoder LM with `<image>` placeholder splicing.

    Args:
        vision: Module `(pixel_values (N, C, H, W), pixel_attention_mask=(N, H, W) | None)` ->
            (N, T, Dv) tokens. `pixel_attention_mask` is only passed when one is given.
        connector: Module (N, T, Dv) -> (N, T', D), D the decoder width.
        decoder: The language model.
        image_token_id: Id of the `<image>` placeholder; each image fills T' consecutive ones.
    """

    def __init__(
        self, vision: nn.Module, connector: nn.Module, decoder: DecoderLM, image_token_id: int
    ) -> None:
        super().__init__()
        self.vision = vision
        self.connector = connector
        self.decoder = decoder
        self.image_token_id = image_token_id
        # Stop token(s) `generate` uses when none is passed (set from a checkpoint's
        # generation_config.json by the loaders, as transformers does).
        self.eos_token_id: int | list[int] | None = None

    def encode_images(
        self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode the real images of a padded batch into LM-width features.

        Args:
            pixel_values: (B, M, C, H, W) images, or (N, C, H, W) treated as one image per row.
                Images whose pixels are all zero are padding and dropped (as in transformers).
            pixel_attention_mask: (B, M, H, W) (or (N, H, W)) real-pixel mask, or None.

        Returns:
            (I, D) features of all real images, in row-major (batch, image, token) order.
        """
        if pixel_values.dim() == 4:
            pixel_values = pixel_values[:, None]
            if pixel_attention_mask is not None:
                pixel_attention_mask = pixel_attention_mask[:, None]
        b, m = pixel_values.shape[:2]
        dtype = next(self.vision.parameters()).dtype
        images = pixel_values.to(dtype).reshape(b * m, *pixel_values.shape[2:])  # (B*M, C, H, W)
        real = (images != 0).flatten(1).any(dim=1)  # (B*M,)
        real[0] |= ~real.any()  # keep one image when all are padding (transformers does too)
        images = images[real]  # (N, C, H, W)
        if pixel_attention_mask is None:
            tokens = self.vision(images)  # (N, T, Dv)
        else:
            mask = pixel_attention_mask.reshape(b * m, *pixel_attention_mask.shape[2:])[real]
            tokens = self.vision(images, pixel_attention_mask=mask)
        features = self.connector(tokens)  # (N, T', D)
        return features.reshape(-1, features.shape[-1])  # (N*T', D)

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, L) ids -> (B, L, D) embeddings with image features at the placeholders.

        Raises:
            ValueError: When the number of `<image>` tokens does not match the image features.
        """
        embeds = self.decoder.get_input_embeddings()(input_ids)  # (B, L, D)
        if pixel_values is None:
            return embeds, None
        features = self.encode_images(pixel_values, pixel_attention_mask).to(embeds.dtype)
        slots = input_ids == self.image_token_id  # (B, L)
        if int(slots.sum()) != features.shape[0]:
            raise ValueError(
                f"image features and image tokens do not match: {int(slots.sum())} <image> "
                f"tokens, {features.shape[0]} feature vectors"
            )
        embeds = embeds.masked_scatter(slots[..., None], features)
        return embeds, features

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = False,
    ) -> VLMOutput:
        """Logits for a prompt with images.

        Args:
            input_ids: (B, L) token ids containing `<image>` placeholders.
            pixel_values: (B, M, C, H, W) images (see `encode_images`), or None for text only.
            pixel_attention_mask: (B, M, H, W) real-pixel mask, or None.
            attention_mask: (B, L) padding mask, 1 = keep.
            use_cache: Return the decoder's KV cache.

        Returns:
            `VLMOutput` with (B, L, V) logits.
        """
        embeds, features = self.embed(input_ids, pixel_values, pixel_attention_mask)
        out = self.decoder(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=use_cache)
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
        **kwargs: object,
    ) -> torch.Tensor:
        """Continue prompts with images; the images are encoded once, then the KV cache is used.

        Args:
            input_ids: (B, P) prompt ids (left-padded with `attention_mask` for batches).
            pixel_values, pixel_attention_mask: As in `forward`.
            attention_mask: (B, P) prompt padding mask.
            max_new_tokens, do_sample, eos_token_id, streamer: See `generation.generate`;
                `eos_token_id=None` uses `self.eos_token_id` (the checkpoint's default).
            **kwargs: Further `generation.generate` options (temperature, top_k, top_p,
                num_beams, generator, pad_token_id).

        Returns:
            (B, P + N) LongTensor of prompt plus new tokens.
        """
        embeds, _ = self.embed(input_ids, pixel_values, pixel_attention_mask)
        if eos_token_id is None:
            eos_token_id = self.eos_token_id
        return _generate(
            self.decoder,
            input_ids,
            max_new_tokens,
            do_sample=do_sample,
            eos_token_id=eos_token_id,
            attention_mask=attention_mask,
            inputs_embeds=embeds,
            streamer=streamer,
            **kwargs,
        )
