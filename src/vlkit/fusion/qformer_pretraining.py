"""BLIP-2 stage-1 pre-training of a Q-Former: the ITC, ITM and ITG heads and losses.

Li et al. 2023, "BLIP-2", Sec. 3.2 / Fig. 2: the Q-Former (`vlkit.fusion.qformer.QFormer`) learns
to extract the visual representation most informative of the text with three objectives that share
its weights and differ only in the self-attention mask (`qformer_attention_mask`). The losses
themselves are in `vlkit.losses.matching`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.fusion.qformer import QFormer
from vlkit.losses.matching import build_itm_batch, itg_loss, itm_loss, qformer_itc_loss

__all__ = ["QFormerPretrainer"]


class QFormerPretrainer(nn.Module):
    """Stage-1 heads and losses of BLIP-2 (Sec. 3.2) on top of a `QFormer`.

    * ITC: one pass with the uni-modal mask; query outputs and the first text token ([CLS])
      are projected, L2-normalised and scored with the max over queries.
    * ITM: hard negatives are mined from the ITC similarity; the 3B pairs go through the
      bi-directional mask and a linear 2-way head on each query output, averaged over queries.
    * ITG: the multimodal causal mask and an LM head on the text positions (the caller is
      expected to put BLIP-2's [DEC] token first in `input_ids`).

    Args:
        qformer: The Q-Former (must have text embeddings).
        embed_dim: Contrastive embedding size (256 in BLIP-2).
        temperature: Initial ITC temperature (0.07, learnable).
    """

    def __init__(self, qformer: QFormer, embed_dim: int = 256, temperature: float = 0.07):
        super().__init__()
        self.qformer = qformer
        dim = qformer.query_tokens.shape[-1]
        vocab = qformer.word_embed.num_embeddings
        self.vision_proj = nn.Linear(dim, embed_dim)
        self.text_proj = nn.Linear(dim, embed_dim)
        self.itm_head = nn.Linear(dim, 2)
        self.lm_head = nn.Linear(dim, vocab)
        self.temp = nn.Parameter(torch.tensor(float(temperature)))

    def forward(
        self,
        image_feats: torch.Tensor,
        input_ids: torch.Tensor,
        text_padding_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the three stage-1 losses.

        Args:
            image_feats: (B, N, encoder_dim) frozen image features; image i matches text i.
            input_ids: (B, T) text ids.
            text_padding_mask: Optional (B, T) bool, `True` for real tokens.
            generator: Optional RNG for hard-negative sampling.

        Returns:
            Dict with scalar `"itc"`, `"itm"`, `"itg"` and their sum `"loss"`.
        """
        q, t = self.qformer(image_feats, input_ids, text_padding_mask, mode="itc")
        z = F.normalize(self.vision_proj(q), dim=-1)
        txt = F.normalize(self.text_proj(t[:, 0]), dim=-1)
        scale = 1.0 / self.temp.clamp(min=1e-3)
        loss_itc, sim = qformer_itc_loss(z, txt, scale)

        img_idx, txt_idx, labels = build_itm_batch(sim, scale, generator)
        pad = None if text_padding_mask is None else text_padding_mask[txt_idx]
        q_itm, _ = self.qformer(image_feats[img_idx], input_ids[txt_idx], pad, mode="itm")
        loss_itm = itm_loss(self.itm_head(q_itm), labels)

        _, t_itg = self.qformer(image_feats, input_ids, text_padding_mask, mode="itg")
        loss_itg = itg_loss(self.lm_head(t_itg), input_ids, text_padding_mask)
        return {
            "itc": loss_itc,
            "itm": loss_itm,
            "itg": loss_itg,
            "loss": loss_itc + loss_itm + loss_itg,
        }
