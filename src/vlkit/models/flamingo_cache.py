"""Flamingo's decoding caches: the images as the gated cross-attention reads them, and media time.

While `FlamingoVLM` decodes, its images do not change, so neither do the keys/values that every
gated cross-attention block computes from the resampled latents: `MediaCache` projects them once.
What does change is each row's media time (Alayrac et al. 2022, Sec. 2.3: a token cross-attends
to the latents of the most recent `<image>` at or before it), which `MediaCache.time` counts over
all tokens seen so far, prompt and generated alike, so a new token gets the same mask as in a full
re-run. `FlamingoKVCache` is the decoder's dynamic `KVCache` holding the batch's `MediaCache`, so
that beam search's `reorder` moves both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from vlkit.models.decoder import KVCache

if TYPE_CHECKING:
    from vlkit.models.flamingo_decoder import FlamingoDecoder

__all__ = ["FlamingoKVCache", "MediaCache"]


class MediaCache:
    """The images of a batch as every gated cross-attention block reads them, plus media time.

    Args:
        decoder: The `FlamingoDecoder` whose blocks project the media.
        media: (B, M, K, D) resampled latents of M images per row.
        image_token_id: The `<image>` marker id (the i-th marker of a row selects its image i).

    Attributes:
        keys_values: Per block name, keys and values (B, H, M*K, hd), projected once.
        time: (B,) long, the number of `<image>` markers among the tokens seen so far (updated
            in place, so a captured CUDA graph of the decode step sees it).
    """

    def __init__(self, decoder: FlamingoDecoder, media: torch.Tensor, image_token_id: int) -> None:
        self.num_media, self.tokens_per_media = media.shape[1], media.shape[2]
        self.image_token_id = image_token_id
        self.keys_values = {
            name: block.attn.project_media(media)
            for name, block in decoder.gated_cross_attention.items()
        }
        self.time = torch.zeros(media.shape[0], dtype=torch.long, device=media.device)

    def advance(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) new ids -> (B, L) media time of each (0 = no image yet); moves `time` on."""
        markers = (input_ids == self.image_token_id).long()
        time = self.time[:, None] + markers.cumsum(-1)  # (B, L)
        self.time.copy_(time[:, -1])
        return time

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search): `index` is a (B',) LongTensor of old rows."""
        self.keys_values = {
            name: (k.index_select(0, index), v.index_select(0, index))
            for name, (k, v) in self.keys_values.items()
        }
        self.time = self.time.index_select(0, index)


class FlamingoKVCache(KVCache):
    """The decoder's dynamic `KVCache` that also keeps the batch's `MediaCache` (for `reorder`)."""

    def __init__(self, media: MediaCache) -> None:
        super().__init__()
        self.media = media

    def reorder(self, index: torch.Tensor) -> None:
        super().reorder(index)
        self.media.reorder(index)
