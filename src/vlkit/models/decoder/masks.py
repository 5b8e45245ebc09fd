"""Attention masks and RoPE positions of new decoder tokens, with or without a KV cache.

Hugging Face's conventions (transformers 5.25): a (B, T) padding mask (1 = keep) over cached plus
new tokens, left padding for batched generation. A forward without `position_ids` places the new
tokens at `past + arange(L)` whatever the mask says (`LlamaModel.forward`); positions that follow
the mask (`cumsum(mask) - 1`, so left-padded rows start at 0 and a hole in the mask does not
advance the position) are what `generate` derives and passes (`position_ids_from_mask`).
"""

from __future__ import annotations

import torch

from vlkit.models.decoder.kv_cache import KVCache, StaticKVCache

__all__ = [
    "attention_mask_4d",
    "mask_and_positions",
    "next_position_ids",
    "position_ids_from_mask",
]


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
    `is_causal` suffices). Without `position_ids` the new tokens sit at `past + arange(L)`, as
    in transformers' `LlamaModel.forward` (the mask only hides keys).
    """
    b, n, _ = inputs_embeds.shape
    if position_ids is not None:
        position_ids = _check_position_ids(position_ids, b, n)
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
        position_ids = torch.arange(past, past + n, device=device).expand(b, n)
    if past == 0 and attention_mask is not None and _no_padding(attention_mask):
        # An all-ones mask is plain causal attention: SDPA's `is_causal` path (and GQA without
        # repeating keys) instead of a (B, 1, L, L) mask, as transformers'
        # `_ignore_causal_mask_sdpa` drops it. SFT batches without padding always carry one.
        attention_mask = None
    return attention_mask_4d(attention_mask, b, n, past, device), position_ids


def _no_padding(attention_mask: torch.Tensor) -> bool:
    """Whether the (B, T) mask keeps every column; False while compiling (the check reads the
    tensor on the host, which would break the graph; transformers skips it there too)."""
    if torch.compiler.is_compiling():
        return False
    return bool(attention_mask.all())


def _check_position_ids(position_ids: torch.Tensor, b: int, n: int) -> torch.Tensor:
    """(B, L) or (1, L) / (L,) positions (broadcast over the batch, as transformers allows)."""
    if position_ids.dim() == 1:
        position_ids = position_ids[None]
    if position_ids.dim() != 2 or position_ids.shape[1] != n or position_ids.shape[0] not in (1, b):
        raise ValueError(
            f"position_ids has shape {tuple(position_ids.shape)}, expected ({b}, {n}) for "
            f"{b} rows of {n} new tokens"
        )
    return position_ids.expand(b, n)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) padding mask -> (B, T) positions `cumsum(mask) - 1`, 0 at masked columns.

    What transformers' `generate` passes for a prompt (`GenerationMixin.
    _prepare_position_ids_for_generation`, 5.25): left-padded rows start at 0 and a hole in the
    mask does not advance the position. Masked columns get 0 (their keys are never attended).
    """
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


def next_position_ids(position_ids: torch.Tensor, num_new: int = 1) -> torch.Tensor:
    """(B, T) positions so far -> (B, num_new) positions of the next tokens: last + 1, + 2, ...

    transformers' `_update_model_kwargs_for_generation`: each generated token continues from the
    row's last position (not from the mask), so a left-padded row keeps counting from its prompt.
    """
    step = torch.arange(1, num_new + 1, device=position_ids.device, dtype=position_ids.dtype)
    return position_ids[:, -1:] + step  # (B, num_new)


def attention_mask_4d(
    attention_mask: torch.Tensor | None, b: int, n: int, past: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean (B, 1, L, past + L) causal + padding mask (True = attend) for SDPA.

    None when SDPA's `is_causal` suffices (no padding and no cache, or one query over the whole
    cache). Query i sits at cache slot `past + i` and sees the unmasked slots up to its own, as
    transformers' `sdpa_mask` builds it (a query at a hole in the mask does not see itself). A
    query that would see no slot at all (a left-padding position) sees its own slot instead, so
    SDPA never gets an all-masked row (NaN on some backends); such outputs are never read by
    real tokens.
    """
    if attention_mask is None and (past == 0 or n == 1):
        return None
    total = past + n
    q_slot = torch.arange(past, total, device=device)[:, None]  # (L, 1)
    k_slot = torch.arange(total, device=device)[None, :]  # (1, T)
    mask = (k_slot <= q_slot)[None, None]  # (1, 1, L, T)
    if attention_mask is not None:
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        mask = mask & keep
        empty = ~mask.any(-1, keepdim=True)  # (B, 1, L, 1) rows with nothing to attend
        mask = mask | (empty & (k_slot == q_slot)[None, None])
    return mask.expand(b, 1, n, total)
