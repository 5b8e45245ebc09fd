"""CLIP's symmetric contrastive (InfoNCE) loss.

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision",
Fig. 3 (numpy-like pseudo-code for the core of CLIP):

    # I_e, T_e: L2-normalised image and text embeddings [n, d_e]
    # t: learned temperature parameter
    logits = np.dot(I_e, T_e.T) * np.exp(t)
    labels = np.arange(n)
    loss_i = cross_entropy_loss(logits, labels, axis=0)
    loss_t = cross_entropy_loss(logits, labels, axis=1)
    loss = (loss_i + loss_t) / 2

Matches open_clip's `ClipLoss` (open_clip/loss.py): `logit_scale` is the multiplier exp(t)
itself, an optional `logit_bias` is added to the logits, and image->text and text->image
cross-entropies with the diagonal as targets are averaged.

Across processes (`distributed=True`) every rank gathers all ranks' embeddings with autograd
and scores its own images and texts against all of them, with targets offset by
`rank * batch`: open_clip's `local_loss=True, gather_with_grad=True`. Each rank's loss is the
mean over its own rows, so the average over ranks (which DDP's gradient averaging computes)
equals the single-process loss of the global batch, gradients included.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from vlkit.distributed import gather_with_grad
from vlkit.losses.pairwise import check_paired, pair_logits, symmetric_cross_entropy

__all__ = ["ClipLoss", "clip_loss"]


def clip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching (image, text) pairs.

    Args:
        image_emb: (N, D) image embeddings, L2-normalised by the caller (as in open_clip).
        text_emb: (N, D) text embeddings; row i describes image i.
        logit_scale: The multiplier exp(t) (e.g. `CLIPOutput.logit_scale`), not its log.
        logit_bias: Optional scalar added to every logit.
        label_smoothing: Passed to both cross-entropies (0 = CLIP).

    Returns:
        The scalar loss (mean of image->text and text->image cross-entropy).
    """
    check_paired(image_emb, text_emb)
    logits_per_image = pair_logits(image_emb, text_emb, logit_scale, logit_bias)
    # Text->image logits are the transpose: the same similarities, read by columns (Fig. 3's
    # axis=0 cross-entropy).
    labels = torch.arange(image_emb.shape[0], device=image_emb.device)
    return symmetric_cross_entropy(logits_per_image, logits_per_image.T, labels, label_smoothing)


def _distributed_clip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None,
    label_smoothing: float,
    group: dist.ProcessGroup | None,
) -> torch.Tensor:
    """This rank's share of the global-batch loss (see the module docstring)."""
    # The autograd-aware all_gather sends each rank's gradient back to the embeddings' owner.
    all_images = gather_with_grad(image_emb, group)
    all_texts = gather_with_grad(text_emb, group)
    logits_per_image = pair_logits(image_emb, all_texts, logit_scale, logit_bias)
    logits_per_text = pair_logits(text_emb, all_images, logit_scale, logit_bias)
    batch = image_emb.shape[0]
    offset = dist.get_rank(group) * batch
    labels = torch.arange(offset, offset + batch, device=image_emb.device)
    return symmetric_cross_entropy(logits_per_image, logits_per_text, labels, label_smoothing)


class ClipLoss(nn.Module):
    """Module form of `clip_loss`, optionally across processes (open_clip's `ClipLoss`).

    Args:
        label_smoothing: Label smoothing for both cross-entropies (0 = CLIP).
        distributed: Add the other ranks' embeddings as negatives (the process group must be
            initialised; every rank needs the same batch size). With one process, or without
            an initialised group, the loss is the single-process one.
        group: Optional process group.
    """

    def __init__(
        self,
        label_smoothing: float = 0.0,
        distributed: bool = False,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.distributed = distributed
        self.group = group

    def forward(
        self,
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """See `clip_loss`; with `distributed`, this rank's share of the global loss."""
        if (
            self.distributed
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size(self.group) > 1
        ):
            return _distributed_clip_loss(
                image_emb, text_emb, logit_scale, logit_bias, self.label_smoothing, self.group
            )
        return clip_loss(image_emb, text_emb, logit_scale, logit_bias, self.label_smoothing)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, distributed={self.distributed}"
