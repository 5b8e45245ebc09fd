"""Generative VLMs that splice image features into the LM's input sequence (the shared base).

LLaVA (`llava.LlavaVLM`), BLIP-2 stage 2 (`qformer_vlm.QFormerVLM`), early fusion
(`early_fusion_vlm.EarlyFusionVLM`) and CogVLM (`cogvlm.CogVLM`) differ only in the connector that
turns an image into the embeddings placed at its `<image>` placeholders (and CogVLM in its
decoder layers): all are a `GenerativeVLM` that knows how many placeholders one image fills, with
the fusion-comparison interface of `vlkit.models.fusion_vlm` (`attention_maps`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from vlkit.models.attention_maps import (
    decoder_attention_probs,
    image_slots,
    image_token_distribution,
)
from vlkit.models.decoder import DecoderLM
from vlkit.models.smolvlm import GenerativeVLM

if TYPE_CHECKING:
    from vlkit.models.fusion_vlm import FusionVLMConfig

__all__ = ["SplicingVLM"]


class SplicingVLM(GenerativeVLM):
    """`GenerativeVLM` with the fusion-comparison interface (LLaVA, Q-Former, early fusion, CogVLM).

    Args:
        vision, connector, decoder, image_token_id: As `GenerativeVLM`.
        num_image_tokens: Placeholders one image fills (the connector's T').
        config: The `FusionVLMConfig` it was built from (None when built by hand).
    """

    def __init__(
        self,
        vision: nn.Module,
        connector: nn.Module,
        decoder: DecoderLM,
        image_token_id: int,
        num_image_tokens: int,
        config: FusionVLMConfig | None = None,
    ) -> None:
        super().__init__(vision, connector, decoder, image_token_id)
        self.num_image_tokens = int(num_image_tokens)
        self.config = config

    # Writes a composed model in vlkit's format: (model, directory) -> None. Set by
    # `vlkit.hub.composed_checkpoint` (models cannot import the format layer); `LlavaVLM`
    # has its own (transformers' LLaVA layout).
    checkpoint_writer: ClassVar[Callable[[Any, str | Path], None] | None] = None

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes a composed model (`vlkit.compose_vlm`) that `vlkit.from_pretrained` loads
        (`vlkit.hub.composed_checkpoint.save_composed`)."""
        writer = type(self).checkpoint_writer
        if writer is None:
            raise RuntimeError("import vlkit.hub to enable save_pretrained")
        writer(self, directory)

    def slot_to_image(self, pixel_values: torch.Tensor) -> torch.Tensor | None:
        """(B, S, T) attention of each image slot to the vision tokens; None when slot s is
        vision token s (a connector that maps tokens one to one)."""
        return None

    @torch.no_grad()
    def attention_maps(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per text position, a distribution over the vision encoder's T tokens.

        Definition: A = the decoder's last-layer self-attention averaged over heads (B, L, L),
        restricted to the columns of the image placeholders and renormalised over them (rows that
        put no weight there, i.e. positions before the image, become uniform). For LLaVA and early
        fusion placeholder t is vision token t (patch t). For the Q-Former the placeholders are
        its queries, so the result is multiplied by `slot_to_image`, the queries' last
        cross-attention layer to the image tokens (head-averaged), (B, L, Q) @ (B, Q, T).

        Args:
            input_ids: (B, L) ids with one image's placeholders per row.
            pixel_values: (B, 1, C, H, W) or (B, C, H, W).
            attention_mask: (B, L) padding mask, or None.

        Returns:
            (B, L, T) rows summing to 1.
        """
        embeds, _ = self.embed(input_ids, pixel_values)
        lm = decoder_attention_probs(
            self.decoder, embeds, attention_mask, **self.decoder_inputs(input_ids)
        )  # (B, L, L)
        slots = image_slots(input_ids, self.image_token_id, self.num_image_tokens)  # (B, S)
        weights = lm.gather(-1, slots[:, None].expand(-1, lm.shape[1], -1))  # (B, L, S)
        return image_token_distribution(weights, self.slot_to_image(pixel_values))
