"""InfoNCE with a memory bank of past embeddings as extra negatives (He et al. 2020, MoCo).

Small batches give contrastive learning few negatives. A FIFO queue keeps the embeddings of the
last `size` samples; every image is contrasted with the batch's texts plus the queued texts, and
every text with the batch's images plus the queued images. Queued entries are constants (no
gradient). Because old entries came from older weights, MoCo (Sec. 3.2) computes the keys with a
slowly moving momentum copy of the encoder: `MomentumEncoder` keeps that copy, and the loss then
takes the keys (`key_image_emb`, `key_text_emb`) from it.

`vlkit train loss.kind=memory_bank` trains with both (`vlkit.training.tasks.MemoryBankTask`); the
queue, its pointer and the momentum weights are saved with every checkpoint, so a resumed run
continues exactly. With `hard_negative_beta > 0` the queue's negatives are weighted by their
hardness as in Robinson et al. 2021 (`vlkit.losses.hard_negative`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vlkit.losses.hard_negative import hard_negative_cross_entropy
from vlkit.losses.pairwise import pair_logits, symmetric_cross_entropy

__all__ = ["MemoryBankInfoNCE", "MomentumEncoder"]


class MemoryBankInfoNCE(nn.Module):
    """Symmetric InfoNCE whose negatives are the batch plus a FIFO queue.

    Args:
        embed_dim: Embedding size.
        size: Number of past samples kept per modality.
        label_smoothing: As in `ClipLoss`.
        hard_negative_beta: Weight the negatives by hardness (Robinson et al. 2021, beta >= 0;
            0: plain InfoNCE). Not combined with label smoothing.
    """

    def __init__(
        self,
        embed_dim: int,
        size: int,
        label_smoothing: float = 0.0,
        hard_negative_beta: float = 0.0,
    ) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"memory bank size must be >= 1, got {size}")
        if hard_negative_beta < 0:
            raise ValueError(f"hard_negative_beta must be >= 0, got {hard_negative_beta}")
        if hard_negative_beta and label_smoothing:
            raise ValueError("hard_negative_beta and label_smoothing cannot be combined")
        self.size = size
        self.label_smoothing = label_smoothing
        self.hard_negative_beta = hard_negative_beta
        self.register_buffer("image_queue", torch.zeros(size, embed_dim))
        self.register_buffer("text_queue", torch.zeros(size, embed_dim))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
        """Writes a batch over the oldest entries (a ring buffer)."""
        batch = image_emb.shape[0]
        if batch > self.size:  # only the newest `size` samples can be kept
            image_emb, text_emb, batch = image_emb[-self.size :], text_emb[-self.size :], self.size
        rows = (self.pointer + torch.arange(batch, device=self.pointer.device)) % self.size
        self.image_queue[rows] = image_emb.detach().to(self.image_queue.dtype)
        self.text_queue[rows] = text_emb.detach().to(self.text_queue.dtype)
        self.pointer.copy_((self.pointer + batch) % self.size)
        self.filled.copy_(torch.clamp(self.filled + batch, max=self.size))

    def forward(
        self,
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None = None,
        key_image_emb: torch.Tensor | None = None,
        key_text_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of the batch against batch + queue; then (in training) enqueues the batch keys.

        Args:
            image_emb, text_emb: (B, D) normalized query embeddings (with gradient).
            logit_scale: The multiplier exp(t).
            logit_bias: Optional bias added to every logit.
            key_image_emb, key_text_emb: (B, D) keys from a momentum encoder; default: the
                queries themselves, detached for the queue (memory bank without momentum).
        """
        keys_image = image_emb if key_image_emb is None else key_image_emb
        keys_text = text_emb if key_text_emb is None else key_text_emb
        filled = int(self.filled)
        texts = torch.cat([keys_text, self.text_queue[:filled].to(keys_text.dtype)])
        images = torch.cat([keys_image, self.image_queue[:filled].to(keys_image.dtype)])
        logits_i2t = pair_logits(image_emb, texts, logit_scale, logit_bias)  # (B, B + filled)
        logits_t2i = pair_logits(text_emb, images, logit_scale, logit_bias)
        labels = torch.arange(image_emb.shape[0], device=image_emb.device)
        if self.hard_negative_beta:
            beta = self.hard_negative_beta
            loss = (
                hard_negative_cross_entropy(logits_i2t, labels, beta)
                + hard_negative_cross_entropy(logits_t2i, labels, beta)
            ) / 2
        else:
            loss = symmetric_cross_entropy(logits_i2t, logits_t2i, labels, self.label_smoothing)
        if self.training:
            self.enqueue(keys_image, keys_text)
        return loss


class MomentumEncoder(nn.Module):
    """An exponential moving average of a CLIP-like model: theta_k <- m theta_k + (1 - m) theta_q
    (MoCo, Eq. 2), used without gradient to embed the keys."""

    def __init__(self, model: nn.Module, momentum: float = 0.995) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.model = copy.deepcopy(model).eval()
        for param in self.model.parameters():
            param.requires_grad = False

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, query in zip(self.model.parameters(), model.parameters(), strict=True):
            key.mul_(self.momentum).add_(query.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def forward(
        self, images: torch.Tensor, texts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            self.model.encode_image(images, normalize=True),
            self.model.encode_text(texts, normalize=True),
        )
