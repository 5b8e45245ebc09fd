"""BLIP-2's Querying Transformer (Q-Former).

Li et al. 2023, "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image Encoders
and Large Language Models", Sec. 3.1 (model) and Sec. 3.2 / Fig. 2 (stage-1 objectives):

* A fixed set of learned query embeddings (32 x 768 in the paper) interacts with the frozen
  image encoder's features through cross-attention layers inserted every other transformer
  block (`cross_attention_frequency=2`, as in the reference `Blip2QFormerLayer`, which adds
  cross-attention when `layer_idx % frequency == 0`). Only the *query* positions cross-attend.
* Queries and text tokens share the self-attention layers; the attention mask decides what
  each side may see, one mask per stage-1 objective (Fig. 2, right):

  - ITC (image-text contrastive): uni-modal mask, queries and text do not see each other.
  - ITM (image-text matching): bi-directional mask, everything sees everything.
  - ITG (image-grounded text generation): multimodal causal mask, queries see all queries
    but no text; every text token sees all queries and the text up to itself.

* The feed-forward layers are modality specific: query positions go through one FFN and text
  positions through another (the reference `intermediate_query`/`output_query` vs
  `intermediate`/`output` weights).

The stage-1 heads and losses (ITC, ITM, ITG) live in `vlkit.fusion.qformer_pretraining`.

The blocks are BERT style (post-LayerNorm residuals, GELU FFN), as the Q-Former is
initialised from BERT-base. Attention is `F.scaled_dot_product_attention` with boolean masks
(`True` = may attend).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "QFormer",
    "QFormerLayer",
    "itc_attention_mask",
    "itg_attention_mask",
    "itm_attention_mask",
    "qformer_attention_mask",
]


def itc_attention_mask(num_queries: int, num_text: int, device=None) -> torch.Tensor:
    """Uni-modal self-attention mask for ITC: queries see only queries, text only text.

    Returns:
        (Q + T, Q + T) bool mask, `True` where row position may attend to column position.
    """
    n = num_queries + num_text
    mask = torch.zeros(n, n, dtype=torch.bool, device=device)
    mask[:num_queries, :num_queries] = True
    mask[num_queries:, num_queries:] = True
    return mask


def itm_attention_mask(num_queries: int, num_text: int, device=None) -> torch.Tensor:
    """Bi-directional self-attention mask for ITM: every position sees every position.

    Returns:
        (Q + T, Q + T) all-`True` bool mask.
    """
    n = num_queries + num_text
    return torch.ones(n, n, dtype=torch.bool, device=device)


def itg_attention_mask(num_queries: int, num_text: int, device=None) -> torch.Tensor:
    """Multimodal causal mask for ITG.

    Queries attend to all queries and no text; text token t attends to all queries and to
    text tokens 0..t.

    Returns:
        (Q + T, Q + T) bool mask.
    """
    n = num_queries + num_text
    mask = torch.zeros(n, n, dtype=torch.bool, device=device)
    mask[:, :num_queries] = True
    mask[num_queries:, num_queries:] = torch.ones(
        num_text, num_text, dtype=torch.bool, device=device
    ).tril()
    return mask


_MASKS = {"itc": itc_attention_mask, "itm": itm_attention_mask, "itg": itg_attention_mask}


def qformer_attention_mask(
    mode: str,
    num_queries: int,
    num_text: int,
    text_padding_mask: torch.Tensor | None = None,
    device=None,
) -> torch.Tensor:
    """Objective mask combined with a text key-padding mask.

    Args:
        mode: One of `"itc"`, `"itm"`, `"itg"`.
        num_queries: Q.
        num_text: T.
        text_padding_mask: Optional (B, T) bool, `True` for real tokens, `False` for padding.
            Padded text keys are hidden from every row (a position always sees itself, so no
            row is fully masked).
        device: Device of the result.

    Returns:
        (Q + T, Q + T) mask without padding, else (B, 1, Q + T, Q + T).
    """
    if mode not in _MASKS:
        raise ValueError(f"mode must be one of {sorted(_MASKS)}, got {mode!r}")
    mask = _MASKS[mode](num_queries, num_text, device=device)
    if text_padding_mask is None:
        return mask
    b = text_padding_mask.shape[0]
    keys = torch.cat(
        [
            torch.ones(b, num_queries, dtype=torch.bool, device=text_padding_mask.device),
            text_padding_mask.bool(),
        ],
        dim=1,
    )  # (B, L)
    full = mask.to(keys.device)[None] & keys[:, None, :]
    eye = torch.eye(full.shape[-1], dtype=torch.bool, device=keys.device)
    return (full | eye)[:, None]


class _Attention(nn.Module):
    """Multi-head attention (self or cross) on top of `F.scaled_dot_product_attention`."""

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError("dim must be divisible by num_heads")
        kv_dim = kv_dim or dim
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(kv_dim, dim)
        self.v = nn.Linear(kv_dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(
        self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args: x (B, L, D), kv (B, S, Dkv), mask bool broadcastable to (B, H, L, S).

        Returns:
            (B, L, D).
        """
        b, n, d = x.shape
        h = self.num_heads
        q = self.q(x).view(b, n, h, -1).transpose(1, 2)
        k = self.k(kv).view(b, kv.shape[1], h, -1).transpose(1, 2)
        v = self.v(kv).view(b, kv.shape[1], h, -1).transpose(1, 2)
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(o.transpose(1, 2).reshape(b, n, d))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, eps: float = 1e-12):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BERT `Intermediate` + `Output`: post-LN residual FFN on (..., D)."""
        return self.norm(x + self.drop(self.fc2(F.gelu(self.fc1(x)))))


class QFormerLayer(nn.Module):
    """One Q-Former block: shared self-attn, optional query-only cross-attn, split FFNs.

    Args:
        dim: Hidden size D.
        num_heads: Attention heads.
        encoder_dim: Image feature size (keys/values of the cross-attention).
        has_cross_attention: Whether this block cross-attends to the image.
        mlp_ratio: FFN hidden size / D.
        dropout: Dropout on attention probabilities and residual branches.
        mlp_dim: FFN hidden size; overrides `mlp_ratio` (HF `intermediate_size`).
        layer_norm_eps: Epsilon of the post-LayerNorms (BERT's 1e-12).
        text_ffn: Build the text FFN. A Q-Former that never sees text (transformers'
            `Blip2ForConditionalGeneration`, `use_qformer_text_input=False`) has none.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        encoder_dim: int,
        has_cross_attention: bool,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        mlp_dim: int | None = None,
        layer_norm_eps: float = 1e-12,
        text_ffn: bool = True,
    ):
        super().__init__()
        eps = layer_norm_eps
        self.self_attn = _Attention(dim, num_heads, dropout=dropout)
        self.self_norm = nn.LayerNorm(dim, eps=eps)
        self.has_cross_attention = has_cross_attention
        if has_cross_attention:
            self.cross_attn = _Attention(dim, num_heads, kv_dim=encoder_dim, dropout=dropout)
            self.cross_norm = nn.LayerNorm(dim, eps=eps)
        hidden = mlp_dim if mlp_dim is not None else int(dim * mlp_ratio)
        self.ffn_query = _FeedForward(dim, hidden, dropout, eps)
        self.ffn_text = _FeedForward(dim, hidden, dropout, eps) if text_ffn else None
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        hidden: torch.Tensor,
        num_queries: int,
        image_feats: torch.Tensor,
        self_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            hidden: (B, Q + T, D) queries followed by text tokens (T may be 0).
            num_queries: Q.
            image_feats: (B, N, encoder_dim) frozen image features.
            self_mask: Bool mask broadcastable to (B, H, Q + T, Q + T).
            image_mask: Optional (B, N) bool, `True` for valid image features.

        Returns:
            (B, Q + T, D).
        """
        hidden = self.self_norm(hidden + self.drop(self.self_attn(hidden, hidden, self_mask)))
        queries, text = hidden[:, :num_queries], hidden[:, num_queries:]
        if self.has_cross_attention:
            cmask = None if image_mask is None else image_mask[:, None, None, :].bool()
            queries = self.cross_norm(
                queries + self.drop(self.cross_attn(queries, image_feats, cmask))
            )
        queries = self.ffn_query(queries)
        if text.shape[1]:
            if self.ffn_text is None:
                raise ValueError("this Q-Former has no text FFN (built with text_ffn=False)")
            text = self.ffn_text(text)
        return torch.cat([queries, text], dim=1)


class QFormer(nn.Module):
    """BLIP-2 Q-Former with learned queries and BERT-style text embeddings.

    Args:
        encoder_dim: Channel size of the frozen image features.
        dim: Hidden size D (768 in BLIP-2).
        num_queries: Number of learned queries (32 in BLIP-2).
        num_layers: Transformer blocks (12 in BLIP-2).
        num_heads: Attention heads.
        cross_attention_frequency: Block i cross-attends to the image iff
            `i % cross_attention_frequency == 0`.
        vocab_size: Text vocabulary size (0 = queries only, no text embeddings).
        max_text_len: Number of learned text position embeddings.
        mlp_ratio: FFN hidden size / D.
        dropout: Dropout rate.
        mlp_dim: FFN hidden size; overrides `mlp_ratio`.
        layer_norm_eps: Epsilon of the embedding and block LayerNorms.
        image_norm: LayerNorm the image features first (LAVIS's `ln_vision`). transformers'
            BLIP-2 has none here: its vision tower's `post_layernorm` plays that role.
        text_ffn: Build the text FFNs (see `QFormerLayer`).
    """

    def __init__(
        self,
        encoder_dim: int,
        dim: int = 768,
        num_queries: int = 32,
        num_layers: int = 12,
        num_heads: int = 12,
        cross_attention_frequency: int = 2,
        vocab_size: int = 30523,
        max_text_len: int = 512,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        mlp_dim: int | None = None,
        layer_norm_eps: float = 1e-12,
        image_norm: bool = True,
        text_ffn: bool = True,
    ):
        super().__init__()
        self.num_queries = num_queries
        self.dim = dim
        self.query_tokens = nn.Parameter(torch.randn(1, num_queries, dim) * 0.02)
        self.image_norm = nn.LayerNorm(encoder_dim) if image_norm else nn.Identity()
        if vocab_size:
            self.word_embed = nn.Embedding(vocab_size, dim)
            self.pos_embed = nn.Embedding(max_text_len, dim)
        self.embed_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.embed_drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            QFormerLayer(
                dim,
                num_heads,
                encoder_dim,
                has_cross_attention=(i % cross_attention_frequency == 0),
                mlp_ratio=mlp_ratio,
                dropout=dropout,
                mlp_dim=mlp_dim,
                layer_norm_eps=layer_norm_eps,
                text_ffn=text_ffn,
            )
            for i in range(num_layers)
        )

    def add_text_input(self, vocab_size: int, max_text_len: int = 512) -> None:
        """Give a queries-only Q-Former (e.g. loaded from transformers'
        `Blip2ForConditionalGeneration`, which keeps no text side) what stage-1 training needs:
        text embeddings (normal, std 0.02, as BERT's init) and, where missing, text FFNs
        copied from the query FFNs (BLIP-2 initialises both FFNs from the same BERT weights,
        Sec. 3.1). Existing text embeddings and FFNs are kept. Then
        `QFormerPretrainer(qformer)` computes ITC / ITM / ITG on the loaded weights.
        """
        if not hasattr(self, "word_embed"):
            device = self.query_tokens.device
            self.word_embed = nn.Embedding(vocab_size, self.dim, device=device)
            self.pos_embed = nn.Embedding(max_text_len, self.dim, device=device)
            for table in (self.word_embed, self.pos_embed):
                nn.init.normal_(table.weight, std=0.02)
        for layer in self.layers:
            if layer.ffn_text is None:
                layer.ffn_text = copy.deepcopy(layer.ffn_query)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, D) word + position embeddings (not normalised)."""
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.word_embed(input_ids) + self.pos_embed(pos)[None]

    def forward(
        self,
        image_feats: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        text_padding_mask: torch.Tensor | None = None,
        mode: str = "itm",
        image_mask: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the queries (and optionally text) through the Q-Former.

        Args:
            image_feats: (B, N, encoder_dim) frozen image-encoder features.
            input_ids: Optional (B, T) text ids.
            text_padding_mask: Optional (B, T) bool, `True` for real text tokens.
            mode: Self-attention mask: `"itc"`, `"itm"` or `"itg"` (ignored without text).
            image_mask: Optional (B, N) bool, `True` for valid image features.
            text_embeds: Optional (B, T, D) text embeddings instead of `input_ids`.

        Returns:
            `(query_out, text_out)`: (B, Q, D) and (B, T, D) (`None` without text).
        """
        b = image_feats.shape[0]
        image_feats = self.image_norm(image_feats)
        queries = self.query_tokens.expand(b, -1, -1)
        if input_ids is not None and text_embeds is None:
            text_embeds = self.embed_text(input_ids)
        if text_embeds is None:
            hidden, num_text, mask = queries, 0, None
        else:
            hidden = torch.cat([queries, text_embeds], dim=1)
            num_text = text_embeds.shape[1]
            mask = qformer_attention_mask(
                mode, self.num_queries, num_text, text_padding_mask, device=hidden.device
            )
        hidden = self.embed_drop(self.embed_norm(hidden))
        for layer in self.layers:
            hidden = layer(hidden, self.num_queries, image_feats, mask, image_mask)
        query_out = hidden[:, : self.num_queries]
        text_out = hidden[:, self.num_queries :] if num_text else None
        return query_out, text_out
