"""Early fusion: one transformer over a single [image patches; text] token sequence.

Chameleon Team 2024, "Chameleon: Mixed-Modal Early-Fusion Foundation Models", Sec. 2: images
and text are represented in one token sequence and processed by a single transformer from
the first layer on, with no modality-specific encoder. Chameleon obtains image tokens from a
VQ tokenizer; this module uses the simpler continuous variant (a linear patch embedding, as
in Fuyu-8B) so it trains end to end, and adds a learned modality embedding (image / text) to
every token so the shared transformer can tell the two apart.

Blocks are pre-LN (attention + GELU MLP) over `F.scaled_dot_product_attention`, with a causal
mask (decoder, as Chameleon) or bidirectional attention (`causal=False`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EarlyFusionBlock", "EarlyFusionTransformer"]


class EarlyFusionBlock(nn.Module):
    """Pre-LN transformer block.

    Args:
        dim: Hidden size D.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden size / D.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError("dim must be divisible by num_heads")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x (B, L, D); mask bool broadcastable to (B, H, L, L). Returns (B, L, D)."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(o.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class EarlyFusionTransformer(nn.Module):
    """Single transformer over patch-embedded images followed by text tokens.

    Args:
        vocab_size: Text vocabulary size.
        image_size: Input image side (square).
        patch_size: Patch side.
        in_chans: Image channels.
        dim: Hidden size D.
        depth: Number of blocks.
        num_heads: Attention heads.
        max_text_len: Learned text position embeddings.
        causal: Causal (default) or bidirectional attention over the whole sequence.
        mlp_ratio: MLP hidden size / D.
    """

    IMAGE, TEXT = 0, 1

    def __init__(
        self,
        vocab_size: int,
        image_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        dim: int = 512,
        depth: int = 8,
        num_heads: int = 8,
        max_text_len: int = 256,
        causal: bool = True,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.causal = causal
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.image_pos = nn.Parameter(torch.randn(1, self.num_patches, dim) * 0.02)
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.text_pos = nn.Parameter(torch.randn(1, max_text_len, dim) * 0.02)
        self.modality_embed = nn.Embedding(2, dim)
        self.blocks = nn.ModuleList(
            EarlyFusionBlock(dim, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        text_padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse an image and its text in one sequence.

        Args:
            images: (B, C, H, W).
            input_ids: (B, T) token ids.
            text_padding_mask: Optional (B, T) bool, `True` for real tokens.

        Returns:
            `(hidden, logits)`: (B, P + T, D) final hidden states (patches first) and
            (B, T, V) LM logits of the text positions.
        """
        b, t = input_ids.shape
        img = self.patch_embed(images).flatten(2).transpose(1, 2) + self.image_pos
        img = img + self.modality_embed.weight[self.IMAGE]
        txt = self.token_embed(input_ids) + self.text_pos[:, :t]
        txt = txt + self.modality_embed.weight[self.TEXT]
        x = torch.cat([img, txt], dim=1)
        n = x.shape[1]
        mask = None
        if self.causal:
            mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        if text_padding_mask is not None:
            keys = torch.cat(
                [
                    torch.ones(b, img.shape[1], dtype=torch.bool, device=x.device),
                    text_padding_mask.bool(),
                ],
                dim=1,
            )[:, None, None, :]
            mask = keys if mask is None else mask & keys
            mask = mask | torch.eye(n, dtype=torch.bool, device=x.device)
        for blk in self.blocks:
            x = blk(x, mask)
        x = self.norm(x)
        return x, self.lm_head(x[:, img.shape[1] :])
