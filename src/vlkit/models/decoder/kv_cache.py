"""Key/value caches of the decoder: one that grows (`KVCache`), one preallocated (`StaticKVCache`).

Keys are cached after RoPE, so cached entries never need re-rotation, and slot t of a cache is
column t of the (B, T) attention mask over cached plus new tokens.
"""

from __future__ import annotations

import torch

from vlkit.models.decoder.config import DecoderConfig

__all__ = ["KVCache", "StaticKVCache"]


class KVCache:
    """Per-layer key/value cache that grows by concatenation along the sequence axis.

    `keys[i]` and `values[i]` have shape (B, H_kv, T, Dh): batch, key/value heads (before GQA
    repetition), cached length T, head width. Keys are stored after RoPE, so cached entries never
    need re-rotation. Slot t of the cache corresponds to column t of the full (B, T) attention mask.
    """

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def seq_len(self) -> int:
        """Number of cached positions T (0 when empty)."""
        return self.keys[0].shape[2] if self.keys else 0

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new (B, H_kv, L, Dh) keys/values for `layer`; return the full (B, H_kv, T+L, Dh)."""
        if layer == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        return self.keys[layer], self.values[layer]

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows in place (beam search): `index` is a (B',) LongTensor of old rows."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]


class StaticKVCache:
    """Preallocated key/value cache of fixed length, written in place (for CUDA graphs).

    The counterpart of Hugging Face's `StaticCache`: `keys[i]` and `values[i]` are
    (B, H_kv, S, Dh) buffers with S = `max_len` slots, allocated once. A forward writes its L new
    keys/values at the slots in the (L,) tensor `cache_position` with `index_copy_`, so tensor
    shapes and addresses never change from one token to the next, which is what a captured CUDA
    graph needs (it replays fixed kernels on fixed memory; see the PyTorch CUDA-graph notes,
    https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs). Attention always runs over all
    S slots: `slot_mask` (B, S) marks the slots that hold real (non-padding) tokens, and the mask
    built by `prepare` hides padding and every slot after the query's own (unwritten slots are
    after it), so the result equals attention over a `KVCache` of the written slots.

    Slot t corresponds to column t of the (B, T) attention mask, as in `KVCache`. `seq_len`
    counts the slots written by forwards that let the cache choose the positions; a caller that
    passes `cache_position` itself (e.g. a captured decode step) keeps `seq_len` up to date.
    """

    def __init__(
        self,
        config: DecoderConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch_size, config.num_kv_heads, max_len, config.head_dim)
        self.keys = [
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_layers)
        ]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.slot_mask = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.slots = torch.arange(max_len, device=device)  # (S,) slot indices, built once
        self.cache_position = self.slots[:0]  # (L,) slots of the current forward
        self.batch_size, self.max_len, self.seq_len = batch_size, max_len, 0

    def __len__(self) -> int:
        return len(self.keys)

    def reset(self) -> None:
        """Empty the cache in place (buffers keep their addresses, so captured graphs stay valid)."""
        for buffer in [*self.keys, *self.values, self.slot_mask]:
            buffer.zero_()
        self.seq_len = 0

    def prepare(
        self,
        n: int,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache_position: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Register L = `n` new tokens; return their attention mask and RoPE positions.

        Only tensor operations depend on `cache_position`, so a CUDA graph can capture this.

        Args:
            n: Number of new tokens L.
            attention_mask: (B, T + L) padding mask over written plus new slots (as for
                `KVCache`, needs `cache_position` None), or None when the new tokens are real.
            position_ids: (B, L) RoPE positions, or None for the slots themselves
                (`cache_position`, what `DecoderLM.forward` computes for a `KVCache`:
                `past + arange(L)`, as transformers does).
            cache_position: (L,) slots to write; None means the L slots after `seq_len`, which
                then advances by L.

        Returns:
            mask (B, 1, L, S) bool (True = attend) and position_ids (B, L).
        """
        if cache_position is None:
            past = self.seq_len
            if past + n > self.max_len:
                raise ValueError(f"static cache full: {past} + {n} tokens > {self.max_len} slots")
            if attention_mask is not None and attention_mask.shape[1] != past + n:
                raise ValueError(
                    f"attention_mask has {attention_mask.shape[1]} columns, expected cached + new = {past + n}"
                )
            cache_position = self.slots[past : past + n]
            self.seq_len = past + n
            if attention_mask is not None:
                self.slot_mask[:, : past + n] = attention_mask.bool()
        elif attention_mask is not None:
            raise ValueError("pass either attention_mask or cache_position to a static cache")
        if attention_mask is None:
            self.slot_mask.index_fill_(1, cache_position, True)
        self.cache_position = cache_position
        if position_ids is None:
            position_ids = cache_position[None].expand(self.batch_size, -1)  # (B, L)
        q_slot = cache_position[:, None]  # (L, 1)
        causal = self.slots[None, :] <= q_slot  # (L, S): also hides the unwritten slots
        mask = causal[None, None] & self.slot_mask[:, None, None, :]  # (B, 1, L, S)
        # As `masks.attention_mask_4d`: a query that sees no slot (left padding) sees its own,
        # so SDPA never gets an all-masked row (NaN on some backends).
        empty = ~mask.any(-1, keepdim=True)  # (B, 1, L, 1)
        return mask | (empty & (self.slots[None, :] == q_slot)[None, None]), position_ids

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, H_kv, L, Dh) keys/values at `cache_position`; return the (B, H_kv, S, Dh) buffers."""
        self.keys[layer].index_copy_(2, self.cache_position, k)
        self.values[layer].index_copy_(2, self.cache_position, v)
        return self.keys[layer], self.values[layer]

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows in place (beam search): `index` is a (B,) LongTensor of old rows."""
        for buffer in [*self.keys, *self.values, self.slot_mask]:
            buffer.copy_(buffer.index_select(0, index))
