"""Multi-head cross-modal attention: text queries attend to media keys/values.

This is the generic cross-attention of the Transformer decoder (Vaswani et al. 2017,
Sec. 3.2.2, "encoder-decoder attention") as used for vision-language fusion, e.g. the
cross-attention inside Flamingo's gated xattn-dense blocks (Alayrac et al. 2022, Sec. 2.2).

Mask convention: ``media_mask`` is boolean with ``True`` = *valid* key (the opposite of
``nn.MultiheadAttention``'s ``key_padding_mask``). Query rows with no valid key produce a
zero attention output (before the output projection) instead of NaN.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class CrossModalAttention(nn.Module):
    """Multi-head attention from text tokens (queries) to media tokens (keys/values).

    Args:
        dim: Width ``D`` of the text tokens (and of the output).
        num_heads: Number of attention heads ``H``; must divide ``dim``.
        media_dim: Width ``Dv`` of the media tokens; defaults to ``dim``.
        bias: Whether the q/k/v/out projections have biases.
        dropout: Attention-probability dropout (training only).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        media_dim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        media_dim = dim if media_dim is None else media_dim
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(media_dim, dim, bias=bias)
        self.v_proj = nn.Linear(media_dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, n, hd)

    def project_media(
        self, media_tokens: Tensor, key_pos_embed: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Keys and values (B, H, N_total, hd) of (B, N, Dv) or (B, M, N, Dv) media tokens.

        They depend on the media only, so a decoder can compute them once per set of images and
        pass them as `forward(..., media_kv=...)` for every new text token (a cross-attention
        KV cache).
        """
        if media_tokens.dim() == 4:
            media_tokens = media_tokens.flatten(1, 2)  # (B, M*N, Dv)
        keys_in = media_tokens if key_pos_embed is None else media_tokens + key_pos_embed
        return self._split(self.k_proj(keys_in)), self._split(self.v_proj(media_tokens))

    def forward(
        self,
        text_tokens: Tensor,
        media_tokens: Tensor | None,
        media_mask: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        key_pos_embed: Tensor | None = None,
        return_attention: bool = False,
        media_kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend from text to media.

        Args:
            text_tokens: Queries, shape (B, L, D).
            media_tokens: Keys/values, shape (B, N, Dv) or (B, M, N, Dv) (flattened to
                (B, M*N, Dv)).
            media_mask: Optional key padding mask, bool (B, N) or (B, M, N); True = valid.
            attn_mask: Optional per-query mask, bool (B, L, N_total); True = may attend.
                Combined (AND) with ``media_mask``.
            key_pos_embed: Optional positional embedding added to the media tokens before
                the *key* projection only (values stay position-free), broadcastable to
                (B, N_total, Dv).
            return_attention: If True also return the attention probabilities
                (B, H, L, N_total), computed by an explicit softmax path.
            media_kv: Keys and values from `project_media`, computed earlier (e.g. once per
                image for all decoding steps); `media_tokens` and `key_pos_embed` are then unused
                (pass None).

        Returns:
            Output of shape (B, L, D), and the probabilities if ``return_attention``.
        """
        if media_kv is None:
            if media_tokens is None:
                raise ValueError("pass media_tokens or media_kv")
            media_kv = self.project_media(media_tokens, key_pos_embed)
        if media_mask is not None and media_mask.dim() == 3:
            media_mask = media_mask.flatten(1, 2)  # (B, M*N)
        k, v = media_kv  # (B, H, N, hd) each
        b, length, _ = text_tokens.shape
        n = k.shape[2]
        q = self._split(self.q_proj(text_tokens))  # (B, H, L, hd)

        mask: Tensor | None = None
        if media_mask is not None:
            mask = media_mask.bool()[:, None, :].expand(b, length, n)  # (B, L, N)
        if attn_mask is not None:
            am = attn_mask.bool().expand(b, length, n)
            mask = am if mask is None else mask & am
        empty_rows: Tensor | None = None
        if mask is not None:
            empty_rows = ~mask.any(dim=-1)  # (B, L)
            # Let rows with no valid key attend everywhere (avoids NaN); zeroed below.
            mask = (mask | empty_rows[..., None])[:, None]  # (B, 1, L, N)

        drop = self.dropout if self.training else 0.0
        probs: Tensor | None = None
        if return_attention:
            scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # (B, H, L, N)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            probs = scores.softmax(dim=-1)
            if empty_rows is not None:
                probs = probs.masked_fill(empty_rows[:, None, :, None], 0.0)
            out = F.dropout(probs, drop, self.training) @ v  # (B, H, L, hd)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
            if empty_rows is not None:
                out = out.masked_fill(empty_rows[:, None, :, None], 0.0)  # (B, H, L, hd)
        out = self.out_proj(out.transpose(1, 2).reshape(b, length, self.dim))  # (B, L, D)
        if return_attention:
            assert probs is not None
            return out, probs
        return out
