"""Text transformer tower of CLIP (Radford et al. 2021, Sec. 2.4) and SigLIP.

CLIP: causal self-attention; the feature of the end-of-text token is the text embedding. Two rules
locate it in real checkpoints: the first position of `eos_token_id` (Hugging Face configs after
transformers PR #24773), or `argmax(input_ids)` (OpenAI/open_clip, and HF configs whose
`eos_token_id` is 2), which works because end-of-text has the largest id in CLIP's vocabulary.
SigLIP: bidirectional attention and the last position's feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlkit.layers import Transformer
from vlkit.models.outputs import TextOutput


@dataclass
class TextConfig:
    """Shape and variant of a text transformer.

    Attributes:
        pooling: "eos" (first `eos_token_id`), "argmax" (position of the largest id) or "last".
        causal: Causal self-attention (CLIP) or bidirectional (SigLIP).
    """

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_dim: int = 2048
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    causal: bool = True
    pooling: str = "argmax"
    eos_token_id: int = 49407
    pad_token_id: int = 0
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0

    def __post_init__(self) -> None:
        if self.pooling not in ("eos", "argmax", "last"):
            raise ValueError(
                f"TextConfig.pooling must be eos, argmax or last, got {self.pooling!r}"
            )


class TextTransformer(nn.Module):
    """Token ids (B, L) -> `TextOutput(tokens (B, L, D), pooled (B, D))`."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Parameter(torch.zeros(config.context_length, config.width))
        self.transformer = Transformer(
            config.width, config.layers, config.heads, config.mlp_dim, config.activation,
            config.layer_norm_eps, config.dropout, config.attention_dropout, config.drop_path,
        )  # fmt: skip
        self.norm_final = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.init_weights()

    @property
    def width(self) -> int:
        return self.config.width

    def init_weights(self) -> None:
        """Initialisation as in open_clip's `TextTransformer`."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.transformer.gradient_checkpointing = enabled

    def _attention_mask(
        self, attention_mask: torch.Tensor | None, length: int, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """Additive (B or 1, 1, L, L) mask combining causality and padding, or None.

        Masked entries get the dtype's most negative finite value rather than -inf, as
        transformers does, so that a row with every key masked stays finite instead of NaN.
        """
        if attention_mask is None:
            return None  # causal-only runs through SDPA's is_causal fast path
        minimum = torch.finfo(dtype).min
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
        if self.config.causal:
            causal = torch.ones(length, length, dtype=torch.bool, device=keep.device).tril()
            keep = keep & causal
        mask = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
        return mask.masked_fill(~keep, minimum)

    def pool_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B,) position of the pooled token of each row of `input_ids` (B, L)."""
        if self.config.pooling == "last":
            return torch.full_like(input_ids[:, 0], input_ids.shape[-1] - 1)
        if self.config.pooling == "argmax":
            return input_ids.argmax(dim=-1)
        return (input_ids == self.config.eos_token_id).int().argmax(dim=-1)

    def pool(self, tokens: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Selects the end-of-text feature (B, D) from tokens (B, L, D)."""
        if self.config.pooling == "last":
            return tokens[:, -1]
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        return tokens[rows, self.pool_positions(input_ids)]

    def exact_prefix_length(self, input_ids: torch.Tensor) -> int:
        """The fewest leading columns of `input_ids` that give every row's pooled feature exactly.

        Causal attention (CLIP): position i attends to positions <= i only, so the columns after
        the batch's last pooled position (the padding after the longest prompt's end-of-text,
        most of CLIP's 77 columns) cannot reach any pooled feature, whatever the attention mask.
        Bidirectional attention (SigLIP: every token, padding included, reaches every other) and
        last-position pooling need all the columns. Also all of them in training mode (dropout
        masks would be drawn for other shapes) and while tracing, compiling or exporting (the
        cut depends on the values, which a traced graph would freeze).
        """
        length = input_ids.shape[-1]
        if (
            not self.config.causal
            or self.config.pooling == "last"
            or self.training
            or input_ids.numel() == 0
            or input_ids.device.type == "meta"  # shapes only: no values to read
            or torch.jit.is_tracing()
            or torch.compiler.is_compiling()
            or torch.onnx.is_in_onnx_export()
        ):
            return length
        return min(length, int(self.pool_positions(input_ids).max()) + 1)

    def pooled_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The pooled features (B, D) alone: `forward(...).pooled` on `exact_prefix_length`
        columns. Equal to the full-width result up to float reassociation in the smaller
        matrix products; for CLIP's prompt ensembles (a 10-token prompt in 77 columns) about
        5x less text-tower compute. Use `forward` when the per-token features are needed.
        """
        keep = self.exact_prefix_length(input_ids)
        if keep < input_ids.shape[-1]:
            input_ids = input_ids[:, :keep]
            attention_mask = None if attention_mask is None else attention_mask[:, :keep]
        return self(input_ids, attention_mask).pooled

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> TextOutput:
        length = input_ids.shape[-1]
        if input_ids.ndim != 2 or length > self.config.context_length:
            raise ValueError(
                f"expected token ids of shape (B, L) with L <= {self.config.context_length}, "
                f"got {tuple(input_ids.shape)}"
            )
        x = self.token_embedding(input_ids)  # (B, L, D)
        x = x + self.position_embedding[:length].to(x.dtype)
        mask = self._attention_mask(attention_mask, length, x.dtype)
        x, attentions = self.transformer(
            x, attn_mask=mask, is_causal=self.config.causal, return_attention=return_attention
        )
        x = self.norm_final(x)
        return TextOutput(tokens=x, pooled=self.pool(x, input_ids), attentions=attentions)
