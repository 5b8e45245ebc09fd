"""Where a generative VLM looks: per text position, a distribution over the vision tokens.

Every fusion VLM's `attention_maps` composes two head-averaged attentions: text position -> image
slots (placeholders, Q-Former queries or Perceiver latents), then slot -> vision token
(`image_token_distribution`). The helpers here are shared by the splicing VLMs (LLaVA, Q-Former,
early fusion), CogVLM and Flamingo.
"""

from __future__ import annotations

from typing import Any

import torch

from vlkit.models.decoder import DecoderLM

__all__ = [
    "attention_probs",
    "decoder_attention_probs",
    "image_slots",
    "image_token_distribution",
]


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


@torch.no_grad()
def decoder_attention_probs(
    decoder: DecoderLM,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **layer_kwargs: Any,
) -> torch.Tensor:
    """Last-layer self-attention of a `DecoderLM` (or a subclass), averaged over heads.

    Args:
        inputs_embeds: (B, L, D) input embeddings (images spliced in).
        attention_mask: (B, L) padding mask, or None.
        **layer_kwargs: Passed to every layer and to the last layer's `project` (CogVLM's
            `image_mask` routes image positions to its visual expert).

    Returns:
        (B, L, L) probabilities; row l is the attention of position l over positions <= l.
    """
    b, n, _ = inputs_embeds.shape
    if attention_mask is None:  # an explicit mask: the scores below are computed by hand
        attention_mask = torch.ones(b, n, device=inputs_embeds.device)
    x, cos, sin, mask, _ = decoder.prepare_inputs(
        None, inputs_embeds, attention_mask, None, None, False
    )  # mask (B, 1, L, L)
    layers = decoder.model.layers
    for layer in layers[:-1]:
        x = layer(x, cos, sin, mask, None, **layer_kwargs)
    last = layers[-1]
    q, k, _ = last.project(last.input_layernorm(x), cos, sin, **layer_kwargs)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # GQA: (B, H, L, Dh)
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
