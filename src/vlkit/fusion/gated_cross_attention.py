"""Flamingo gated cross-attention dense block (Alayrac et al. 2022, Sec. 2.2, Fig. 4).

Inserted between frozen LM layers::

    x = x + tanh(alpha_xattn) * CrossAttn(LN(x), media)
    x = x + tanh(alpha_ffw)   * FFW(LN(x))

Both gates are initialised to 0, so at initialisation the block is exactly the identity and
the frozen LM is untouched. Per-image causal masking (Sec. 2.3, "Multi-visual input
support"): each text token cross-attends only to the visual tokens of the *most recent
preceding* image; tokens before any image receive no cross-attention contribution (their
cross-attention output is exactly 0). Note that, as in Flamingo/OpenFlamingo, the gated FFW
still applies to every token, so with ``alpha_ffw != 0`` those tokens are transformed by the
FFW, but never depend on any media.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlkit.fusion.cross_attention import CrossModalAttention


def media_time_index(media_locations: Tensor) -> Tensor:
    """Per-token 1-based index of the most recent image at or before each token.

    Args:
        media_locations: Bool (B, L), True at the ``<image>`` marker positions.

    Returns:
        Long tensor (B, L); 0 for tokens before any image, t for tokens after the t-th image.
    """
    return media_locations.long().cumsum(dim=-1)  # (B, L)


def media_attention_mask(media_time: Tensor, num_media: int, tokens_per_media: int) -> Tensor:
    """Mask letting token l attend only to the tokens of image ``media_time[l]``.

    Args:
        media_time: Long (B, L), 1-based image index per token (0 = no image yet).
        num_media: Number of images ``M``.
        tokens_per_media: Tokens ``N`` per image.

    Returns:
        Bool mask (B, L, M*N); True = may attend.
    """
    image_ids = torch.arange(1, num_media + 1, device=media_time.device)  # (M,)
    image_ids = image_ids.repeat_interleave(tokens_per_media)  # (M*N,)
    return media_time[..., None] == image_ids  # (B, L, M*N)


class GatedCrossAttentionBlock(nn.Module):
    """Flamingo ``GATED XATTN-DENSE`` block.

    Args:
        dim: Text width ``D``.
        media_dim: Visual width ``Dv`` (e.g. Perceiver Resampler output width).
        num_heads: Attention heads.
        ff_mult: FFW hidden expansion factor.
        only_attend_immediate_media: If True (Flamingo default) each token attends only to
            the most recent preceding image; otherwise to all preceding images.
    """

    def __init__(
        self,
        dim: int,
        media_dim: int | None = None,
        num_heads: int = 8,
        ff_mult: int = 4,
        only_attend_immediate_media: bool = True,
    ) -> None:
        super().__init__()
        self.only_attend_immediate_media = only_attend_immediate_media
        self.norm_xattn = nn.LayerNorm(dim)
        self.attn = CrossModalAttention(dim, num_heads, media_dim=media_dim, bias=False)
        self.norm_ffw = nn.LayerNorm(dim)
        self.ffw = nn.Sequential(
            nn.Linear(dim, dim * ff_mult, bias=False),
            nn.GELU(),
            nn.Linear(dim * ff_mult, dim, bias=False),
        )
        self.alpha_xattn = nn.Parameter(torch.zeros(1))
        self.alpha_ffw = nn.Parameter(torch.zeros(1))

    def forward(
        self,
        text_tokens: Tensor,
        media_tokens: Tensor,
        media_mask: Tensor | None = None,
        media_locations: Tensor | None = None,
    ) -> Tensor:
        """Apply the gated block.

        Args:
            text_tokens: (B, L, D) LM hidden states.
            media_tokens: (B, M, N, Dv) visual tokens per image, or (B, N, Dv) for M = 1.
            media_mask: Optional bool (B, M, N) / (B, N) padding mask, True = valid token.
            media_locations: Optional bool (B, L), True at ``<image>`` marker positions.
                If None, every token attends to all media (no per-image masking).

        Returns:
            (B, L, D) updated hidden states.
        """
        if media_tokens.dim() == 3:
            media_tokens = media_tokens[:, None]  # (B, 1, N, Dv)
            if media_mask is not None and media_mask.dim() == 2:
                media_mask = media_mask[:, None]  # (B, 1, N)
        _, m, n, _ = media_tokens.shape

        attn_mask: Tensor | None = None
        if media_locations is not None:
            attn_mask = self.media_time_mask(media_time_index(media_locations), m, n)
        attn_out = self.attn(
            self.norm_xattn(text_tokens), media_tokens, media_mask, attn_mask=attn_mask
        )
        return self._gated_residuals(text_tokens, attn_out)

    def media_time_mask(self, media_time: Tensor, num_media: int, tokens_per_media: int) -> Tensor:
        """Bool (B, L, M*N) cross-attention mask (True = may attend) from (B, L) media times."""
        if self.only_attend_immediate_media:
            return media_attention_mask(media_time, num_media, tokens_per_media)
        ids = torch.arange(1, num_media + 1, device=media_time.device)
        return media_time[..., None] >= ids.repeat_interleave(tokens_per_media)  # (B, L, M*N)

    def forward_projected(
        self, text_tokens: Tensor, media_kv: tuple[Tensor, Tensor], attn_mask: Tensor | None
    ) -> Tensor:
        """`forward` over media keys/values computed earlier by `self.attn.project_media`.

        A decoder with a KV cache projects the (unchanging) media once and reuses them for every
        new token.

        Args:
            text_tokens: (B, L, D) LM hidden states.
            media_kv: Keys and values, each (B, H, M*N, hd).
            attn_mask: Bool (B, L, M*N) from `media_time_mask`, or None (attend to all media).

        Returns:
            (B, L, D) updated hidden states.
        """
        attn_out = self.attn(
            self.norm_xattn(text_tokens), None, attn_mask=attn_mask, media_kv=media_kv
        )
        return self._gated_residuals(text_tokens, attn_out)

    def forward_without_media(self, text_tokens: Tensor) -> Tensor:
        """The block for a sequence that sees no image (a text-only forward).

        Exactly what `forward` gives tokens whose cross-attention mask is empty (tokens before
        the first `<image>`): the cross-attention contributes zero, the gated FFW still runs.

        Args:
            text_tokens: (B, L, D) LM hidden states.

        Returns:
            (B, L, D) updated hidden states.
        """
        return self._gated_residuals(text_tokens, torch.zeros_like(text_tokens))

    def _gated_residuals(self, x: Tensor, attn_out: Tensor) -> Tensor:
        x = x + torch.tanh(self.alpha_xattn) * attn_out  # (B, L, D)
        return x + torch.tanh(self.alpha_ffw) * self.ffw(self.norm_ffw(x))  # (B, L, D)
