"""BLIP-2 stage 2: Q-Former queries as soft visual prompts for the LM.

Li et al. 2023, "BLIP-2", Sec. 3.3 / Fig. 3: the Q-Former's learned queries cross-attend to the
frozen image tokens (no text input), a fully connected layer maps the query outputs to the LM
width and they are prepended to the text as soft visual prompts: here they fill Q `<image>`
placeholders (`QFormerConnector`). Placeholder q is query q, so `QFormerVLM.attention_maps`
carries each text position's attention through the queries' last cross-attention to the image.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlkit.fusion.qformer import QFormer
from vlkit.models.attention_maps import attention_probs
from vlkit.models.splicing_vlm import SplicingVLM

__all__ = ["QFormerConnector", "QFormerVLM"]


class QFormerConnector(nn.Module):
    """BLIP-2 stage-2 connector (Li et al. 2023, Sec. 3.3): Q-Former queries -> linear to LM width.

    The `QFormer` runs its learned queries over the image tokens without text (so no text
    embeddings are built) and every layer cross-attends (`cross_attention_frequency=1`, a
    deviation from BLIP-2's every-other-layer for the shallow Q-Formers used here).

    Args:
        vision_dim: Width Dv of the vision tokens.
        text_dim: LM width D (also the Q-Former width).
        num_queries: Learned queries Q (32 in BLIP-2) = tokens per image given to the LM.
        num_layers: Q-Former blocks.
        num_heads: Q-Former attention heads.
        qformer: A Q-Former built elsewhere (e.g. loaded from a transformers BLIP-2 checkpoint by
            `vlkit.hub.hf_blip2`), used instead of building one from the arguments above; the
            projection then maps its width to `text_dim` (BLIP-2's `language_projection`).
    """

    def __init__(
        self,
        vision_dim: int,
        text_dim: int,
        num_queries: int,
        num_layers: int,
        num_heads: int,
        qformer: QFormer | None = None,
    ) -> None:
        super().__init__()
        if qformer is None:
            qformer = QFormer(
                encoder_dim=vision_dim,
                dim=text_dim,
                num_queries=num_queries,
                num_layers=num_layers,
                num_heads=num_heads,
                cross_attention_frequency=1,
                vocab_size=0,
            )
        self.qformer = qformer
        self.proj = nn.Linear(qformer.dim, text_dim)  # the "fully-connected layer" of Fig. 3

    def forward(self, media_tokens: torch.Tensor) -> torch.Tensor:
        """(N, T, Dv) vision tokens -> (N, Q, D) soft visual prompts."""
        queries, _ = self.qformer(media_tokens)  # (N, Q, D)
        return self.proj(queries)

    @torch.no_grad()
    def media_attention(self, media_tokens: torch.Tensor) -> torch.Tensor:
        """(N, T, Dv) -> (N, Q, T): the queries' last cross-attention to the image, head-averaged."""
        layer = [blk for blk in self.qformer.layers if blk.has_cross_attention][-1]
        attn = layer.cross_attn
        captured: dict[str, torch.Tensor] = {}

        def grab(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            captured["x"], captured["kv"] = args[0], args[1]  # queries (N, Q, D), image (N, T, Dv)

        handle = attn.register_forward_pre_hook(grab)
        try:
            self.qformer(media_tokens)
        finally:
            handle.remove()
        x, kv = captured["x"], captured["kv"]
        b, h = x.shape[0], attn.num_heads
        q = attn.q(x).view(b, x.shape[1], h, -1).transpose(1, 2)  # (N, H, Q, Dh)
        k = attn.k(kv).view(b, kv.shape[1], h, -1).transpose(1, 2)  # (N, H, T, Dh)
        return attention_probs(q, k, None)


class QFormerVLM(SplicingVLM):
    """Vision tokens -> `QFormerConnector` (Q soft prompts) -> spliced -> `DecoderLM`.

    Args: as `SplicingVLM`, with a `QFormerConnector` and `num_image_tokens` = Q.
    """

    connector: QFormerConnector
    # The LM's BOS token: a caption without a prompt starts from Q placeholders + BOS, as
    # transformers' `Blip2ForConditionalGeneration.generate(pixel_values)` does.
    bos_token_id: int | None = None

    def caption_prompt(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, Q + 1) ids of an empty prompt: the Q image placeholders, then BOS (if any)."""
        ids = [self.image_token_id] * self.num_image_tokens
        if self.bos_token_id is not None:
            ids.append(int(self.bos_token_id))
        return torch.tensor([ids], dtype=torch.long, device=device).repeat(batch_size, 1)

    @torch.no_grad()
    def generate(  # type: ignore[override]
        self,
        input_ids: torch.Tensor | None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 20,
        **kwargs: Any,
    ) -> torch.Tensor:
        """As `GenerativeVLM.generate`; `input_ids=None` captions `pixel_values` from
        `caption_prompt` (the result then starts with that prompt, as in transformers)."""
        if input_ids is None:
            if pixel_values is None:
                raise ValueError("pass input_ids or pixel_values")
            input_ids = self.caption_prompt(pixel_values.shape[0], pixel_values.device)
        return super().generate(
            input_ids, pixel_values, attention_mask, max_new_tokens=max_new_tokens, **kwargs
        )

    def slot_to_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, Q, T): the queries' last cross-attention to the image tokens, head-averaged."""
        images = pixel_values.flatten(0, 1) if pixel_values.dim() == 5 else pixel_values
        dtype = next(self.vision.parameters()).dtype
        tokens = self.vision(images.to(dtype))  # (B, T, Dv)
        return self.connector.media_attention(tokens)
