"""Generative VLMs that splice image features into the LM's input sequence, and shared helpers.

Three of the five fusion architectures of `vlkit.models.fusion_vlm` differ only in the connector
that turns an image into the embeddings placed at its `<image>` placeholders (`GenerativeVLM`):

* LLaVA (Liu et al. 2023, Sec. 4.1; LLaVA-1.5, Liu et al. 2024, Sec. 3.2): a projector per vision
  token (`LlavaProjector`), T placeholders per image.
* BLIP-2 stage 2 (Li et al. 2023, Sec. 3.3, Fig. 3): the Q-Former's learned queries cross-attend
  to the frozen image tokens (no text input), a fully connected layer maps the query outputs to
  the LM width and they are prepended to the text as soft visual prompts (`QFormerConnector`).
* Early fusion (Chameleon Team 2024, Sec. 2; continuous patches as in Fuyu-8B): no vision
  encoder, each non-overlapping patch is embedded linearly and the one decoder sees patches and
  text as a single sequence (`PatchEmbedding`).

`SplicingVLM.attention_maps` turns the LM's last-layer attention into a distribution over the
vision encoder's T tokens for each text position (see its docstring for the definition). The
helpers below (`attention_mask_4d`, `position_ids_from_mask`, `attention_probs`,
`image_token_distribution`) are shared with the Flamingo and CogVLM decoders.

Frozen vision towers: `KeepFrozenVisionEval.train` keeps a vision tower whose parameters are all
frozen in eval mode, so `model.train()` never updates its BatchNorm running statistics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vlkit.fusion.qformer import QFormer
from vlkit.models.decoder import (
    Attention,
    DecoderLM,
    apply_rotary,
    attention_mask_4d,
    position_ids_from_mask,
)
from vlkit.models.smolvlm import GenerativeVLM

if TYPE_CHECKING:
    from vlkit.models.fusion_vlm import FusionVLMConfig

__all__ = [
    "KeepFrozenVisionEval",
    "PatchEmbedding",
    "QFormerConnector",
    "SplicingVLM",
    "attention_mask_4d",
    "attention_probs",
    "decoder_attention_probs",
    "image_slots",
    "image_token_distribution",
    "position_ids_from_mask",
]


class KeepFrozenVisionEval:
    """Mixin for modules with a `vision` tower: a fully frozen tower stays in eval mode.

    A tower whose parameters all have `requires_grad=False` (see `fusion_vlm.freeze_vision`) is
    put back into eval mode after every `train(True)`, so BatchNorm running statistics and dropout
    of a frozen, pretrained encoder are never touched by training.
    """

    vision: nn.Module

    def train(self, mode: bool = True) -> Any:
        super().train(mode)  # type: ignore[misc]
        if mode and not any(p.requires_grad for p in self.vision.parameters()):
            self.vision.eval()
        return self


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Head-averaged softmax attention of (B, H, L, Dh) queries over (B, H, S, Dh) keys.

    Args:
        mask: Bool, broadcastable to (B, H, L, S), True = attend; None = no mask.

    Returns:
        (B, L, S) probabilities (rows sum to 1).
    """
    scores = (q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5  # (B, H, L, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1).mean(1)  # (B, L, S)


def _project_qk(
    attn: Attention, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated (B, H, L, Dh) queries and GQA-repeated keys of a decoder `Attention` on (B, L, D)."""
    b, n, _ = h.shape
    q = attn.q_proj(h).view(b, n, attn.num_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(b, n, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
    k = k.repeat_interleave(attn.num_heads // attn.num_kv_heads, dim=1)  # (B, H, L, Dh)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


@torch.no_grad()
def decoder_attention_probs(
    decoder: DecoderLM, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Last-layer self-attention of a `DecoderLM`, averaged over heads.

    Args:
        inputs_embeds: (B, L, D) input embeddings (images spliced in).
        attention_mask: (B, L) padding mask, or None.

    Returns:
        (B, L, L) probabilities; row l is the attention of position l over positions <= l.
    """
    b, n, _ = inputs_embeds.shape
    device = inputs_embeds.device
    keep = attention_mask if attention_mask is not None else torch.ones(b, n, device=device)
    mask = attention_mask_4d(keep, b, n, 0, device)  # explicit (B, 1, L, L)
    positions = position_ids_from_mask(attention_mask, b, n, 0, device)
    x = inputs_embeds
    cos, sin = decoder.model.rotary_emb(positions, x.dtype)  # (B, 1, L, Dh)
    layers = decoder.model.layers
    for layer in layers[:-1]:
        x = layer(x, cos, sin, mask, None)
    last = layers[-1]
    q, k = _project_qk(last.self_attn, last.input_layernorm(x), cos, sin)
    return attention_probs(q, k, mask)


def image_slots(input_ids: torch.Tensor, image_token_id: int, count: int) -> torch.Tensor:
    """(B, count) positions of the `<image>` placeholders; every row must hold exactly `count`.

    Raises:
        ValueError: When a row has another number of placeholders (attention maps support one
            image per row).
    """
    slots = input_ids == image_token_id  # (B, L)
    per_row = slots.sum(1)
    if not bool((per_row == count).all()):
        raise ValueError(
            f"attention maps need exactly {count} <image> tokens per row (one image), got "
            f"{per_row.tolist()}"
        )
    return slots.nonzero()[:, 1].view(input_ids.shape[0], count)


def image_token_distribution(
    slot_weights: torch.Tensor, slot_to_image: torch.Tensor | None = None
) -> torch.Tensor:
    """Compose text -> slot attention with slot -> vision-token attention into (B, L, T) rows.

    Args:
        slot_weights: (B, L, S) non-negative attention of each text position to the S image slots
            (placeholders, Q-Former queries or Perceiver latents); renormalised over the slots.
            Rows with no weight on any slot (positions before the image) become uniform.
        slot_to_image: (B, S, T) row-stochastic attention of each slot to the T vision tokens, or
            None when slot s is vision token s (LLaVA, early fusion).

    Returns:
        (B, L, T) distributions (rows sum to 1).
    """
    total = slot_weights.sum(-1, keepdim=True)  # (B, L, 1)
    uniform = torch.full_like(slot_weights, 1.0 / slot_weights.shape[-1])
    weights = torch.where(total > 0, slot_weights / total.clamp_min(1e-30), uniform)
    return weights if slot_to_image is None else weights @ slot_to_image.to(weights.dtype)


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
    """

    def __init__(
        self, vision_dim: int, text_dim: int, num_queries: int, num_layers: int, num_heads: int
    ) -> None:
        super().__init__()
        self.qformer = QFormer(
            encoder_dim=vision_dim,
            dim=text_dim,
            num_queries=num_queries,
            num_layers=num_layers,
            num_heads=num_heads,
            cross_attention_frequency=1,
            vocab_size=0,
        )
        self.proj = nn.Linear(text_dim, text_dim)  # the "fully-connected layer" of Fig. 3

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


class PatchEmbedding(nn.Module):
    """Early-fusion image tokenizer: non-overlapping patches -> one linear -> + learned position.

    Args:
        image_size: Input side S (square images).
        patch_size: Patch side p; S must be a multiple of p.
        dim: LM width D.
        channels: Image channels C.
    """

    def __init__(self, image_size: int, patch_size: int, dim: int, channels: int = 3) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch_size}")
        self.patch_size = patch_size
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Linear(channels * patch_size * patch_size, dim)
        self.position = nn.Parameter(torch.randn(self.num_patches, dim) * 0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) -> (N, (S/p)^2, D) patch embeddings in raster order."""
        n, c, height, width = images.shape
        p = self.patch_size
        patches = images.reshape(n, c, height // p, p, width // p, p)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(n, -1, c * p * p)  # (N, T, C*p*p)
        return self.proj(patches) + self.position  # (N, T, D)


class SplicingVLM(KeepFrozenVisionEval, GenerativeVLM):
    """`GenerativeVLM` with the fusion-comparison interface (LLaVA, Q-Former, early fusion).

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

    def _lm_attention(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """(B, L, L) head-averaged last-layer attention of the decoder."""
        return decoder_attention_probs(self.decoder, inputs_embeds, attention_mask)

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
        its queries, so the result is multiplied by the queries' last cross-attention layer to
        the image tokens (head-averaged), (B, L, Q) @ (B, Q, T).

        Args:
            input_ids: (B, L) ids with one image's placeholders per row.
            pixel_values: (B, 1, C, H, W) or (B, C, H, W).
            attention_mask: (B, L) padding mask, or None.

        Returns:
            (B, L, T) rows summing to 1.
        """
        embeds, _ = self.embed(input_ids, pixel_values)
        lm = self._lm_attention(input_ids, embeds, attention_mask)  # (B, L, L)
        slots = image_slots(input_ids, self.image_token_id, self.num_image_tokens)  # (B, S)
        weights = lm.gather(-1, slots[:, None].expand(-1, lm.shape[1], -1))  # (B, L, S)
        slot_to_image = None
        if isinstance(self.connector, QFormerConnector):
            images = pixel_values.flatten(0, 1) if pixel_values.dim() == 5 else pixel_values
            dtype = next(self.vision.parameters()).dtype
            tokens = self.vision(images.to(dtype))  # (B, T, Dv)
            slot_to_image = self.connector.media_attention(tokens)  # (B, Q, T)
        return image_token_distribution(weights, slot_to_image)
