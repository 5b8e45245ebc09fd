"""CogVLM's visual expert: modality-specific QKV and FFN weights in a decoder layer.

Wang et al. 2023, "CogVLM: Visual Expert for Pretrained Language Models", Sec. 2.1
("Visual expert module"): every layer of the language model gets a trainable copy of its
QKV matrix and FFN for the image-feature positions. With X = [X_I; X_T] the hidden states,

    Q = concat(X_I W_Q^I, X_T W_Q),  K = concat(X_I W_K^I, X_T W_K),  V = ... likewise,
    Attention(X, W_I, W) = softmax(Tril(Q K^T) / sqrt(D)) V,
    FFN(X) = concat(FFN_I(X_I), FFN(X_T)),

i.e. attention runs over the whole sequence, but which weights project a token depends only
on its modality. The reference implementation (`VisionExpertAttention`,
`VisionExpertMLP`) also splits the attention output projection (`vision_expert_dense` vs
`language_expert_dense`); so does this layer. The norms are shared (pre-LN residuals, with
LayerNorm here instead of the LLM's RMSNorm). The expert weights are initialised as copies of
the text weights (`copy_text_to_expert`), as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VisualExpertLayer"]


def _route(
    x: torch.Tensor, image_mask: torch.Tensor, text_fn: nn.Module, image_fn: nn.Module
) -> torch.Tensor:
    """Apply `text_fn` to text positions and `image_fn` to image positions of (B, L, D)."""
    x_img = x[image_mask]
    x_txt = x[~image_mask]
    y_txt = text_fn(x_txt)
    out = x.new_empty(*x.shape[:-1], y_txt.shape[-1])
    out[~image_mask] = y_txt
    if x_img.shape[0]:
        out[image_mask] = image_fn(x_img)
    return out


class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VisualExpertLayer(nn.Module):
    """Decoder layer with a visual expert (separate weights for image positions).

    Args:
        dim: Hidden size D.
        num_heads: Attention heads.
        mlp_ratio: FFN hidden size / D.
        causal: Causal (decoder, as CogVLM) or bidirectional attention.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, causal: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError("dim must be divisible by num_heads")
        self.num_heads = num_heads
        self.causal = causal
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.qkv_text = nn.Linear(dim, 3 * dim)
        self.qkv_image = nn.Linear(dim, 3 * dim)
        self.out_text = nn.Linear(dim, dim)
        self.out_image = nn.Linear(dim, dim)
        self.mlp_text = _MLP(dim, hidden)
        self.mlp_image = _MLP(dim, hidden)
        self.copy_text_to_expert()

    @torch.no_grad()
    def copy_text_to_expert(self) -> None:
        """Initialise the visual-expert weights as copies of the text weights."""
        for txt, img in (
            (self.qkv_text, self.qkv_image),
            (self.out_text, self.out_image),
            (self.mlp_text, self.mlp_image),
        ):
            img.load_state_dict(txt.state_dict())

    def forward(
        self,
        x: torch.Tensor,
        image_mask: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            x: (B, L, D) interleaved image and text hidden states.
            image_mask: (B, L) bool, `True` at image-token positions.
            padding_mask: Optional (B, L) bool, `True` for real tokens.

        Returns:
            (B, L, D).
        """
        b, n, d = x.shape
        h = self.num_heads
        image_mask = image_mask.bool()
        qkv = _route(self.norm1(x), image_mask, self.qkv_text, self.qkv_image)
        q, k, v = qkv.view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        mask = None
        if self.causal:
            mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        if padding_mask is not None:
            keys = padding_mask.bool()[:, None, None, :]
            mask = keys if mask is None else mask & keys
            mask = mask | torch.eye(n, dtype=torch.bool, device=x.device)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        o = o.transpose(1, 2).reshape(b, n, d)
        x = x + _route(o, image_mask, self.out_text, self.out_image)
        return x + _route(self.norm2(x), image_mask, self.mlp_text, self.mlp_image)
