"""Attention masks and RoPE positions of new decoder tokens, with or without a KV cache.

Hugging Face's conventions: a (B, T) padding mask (1 = keep) over cached plus new tokens, left
padding for batched generation, positions `cumsum(mask) - 1` so left-padded rows start at 0.
"""

from __future__ import annotations

import torch

from vlkit.models.decoder.kv_cache import KVCache, StaticKVCache

__all__ = ["attention_mask_4d", "mask_and_positions", "position_ids_from_mask"]


def mask_and_positions(
    inputs_embeds: torch.Tensor,
    cache: KVCache | StaticKVCache | None,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    cache_position: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The SDPA mask and (B, L) RoPE positions for new tokens `inputs_embeds` (B, L, D).

    Shared by `DecoderLM` and the fusion decoders; the arguments are `DecoderLM.forward`'s.
    A `StaticKVCache` builds a fixed-shape (B, 1, L, S) mask over all its slots from tensors
    only; otherwise the mask covers the cached plus new positions (None where SDPA's
    `is_causal` suffices).
    """
    b, n, _ = inputs_embeds.shape
    if isinstance(cache, StaticKVCache):
        return cache.prepare(n, attention_mask, position_ids, cache_position)
    if cache_position is not None:
        raise ValueError("cache_position needs a StaticKVCache")
    past = cache.seq_len if cache is not None else 0
    device = inputs_embeds.device
    if attention_mask is not None and attention_mask.shape[1] != past + n:
        raise ValueError(
            f"attention_mask has {attention_mask.shape[1]} columns, expected cached + new = {past + n}"
        )
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask, b, n, past, device)
    return attention_mask_4d(attention_mask, b, n, past, device), position_ids


def position_ids_from_mask(
    attention_mask: torch.Tensor | None, b: int, n: int, past: int, device: torch.device
) -> torch.Tensor:
    """(B, L) RoPE positions of the new tokens: `cumsum(mask) - 1` (HF; left-padded rows start
    at 0) or `past + t` without a mask. Shared by `DecoderLM` and the fusion decoders.

    Args:
        attention_mask: (B, past + L) padding mask (1 = keep), or None.
    """
    if attention_mask is None:
        return torch.arange(past, past + n, device=device).expand(b, n)
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)[:, past:]  # (B, L)


def attention_mask_4d(
    attention_mask: torch.Tensor | None, b: int, n: int, past: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean (B, 1, L, past + L) causal + padding mask (True = attend) for SDPA.

    None when SDPA's `is_causal` suffices (no padding and no cache, or one query over the whole
    cache). Query i sits at cache slot `past + i`; every query sees its own slot, so padding rows
    never produce NaN (their outputs are garbage but never read by real tokens).
    """
    if attention_mask is None and (past == 0 or n == 1):
        return None
    total = past + n
    q_slot = torch.arange(past, total, device=device)[:, None]  # (L, 1)
    k_slot = torch.arange(total, device=device)[None, :]  # (1, T)
    mask = (k_slot <= q_slot)[None, None]  # (1, 1, L, T)
    if attention_mask is not None:
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        mask = (mask & keep) | (k_slot == q_slot)[None, None]
    return mask.expand(b, 1, n, total)
