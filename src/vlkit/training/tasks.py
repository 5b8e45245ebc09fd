"""Tasks: how a batch becomes losses. The trainer stays the same for every task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlkit.training.accumulation import accumulated_contrastive_backward


class ContrastiveTask:
    """Image-text contrastive learning (CLIP's InfoNCE or SigLIP's sigmoid loss).

    Args:
        loss_fn: Called as `loss_fn(image_emb, text_emb, logit_scale, logit_bias)`.
        micro_batch_size: When set and smaller than the batch, exact GradCache accumulation.
    """

    def __init__(self, loss_fn: nn.Module, micro_batch_size: int | None = None) -> None:
        self.loss_fn = loss_fn
        self.micro_batch_size = micro_batch_size

    def training_step(
        self,
        model: nn.Module,
        batch: dict[str, Any],
        backward: Callable[[torch.Tensor], None],
    ) -> dict[str, torch.Tensor]:
        images, texts = batch["images"], batch["texts"]
        loss_fn = _capped_temperature(self.loss_fn, _max_logit_scale(model))
        if self.micro_batch_size and self.micro_batch_size < images.shape[0]:
            loss = accumulated_contrastive_backward(
                model, loss_fn, images, texts, self.micro_batch_size, backward_fn=backward
            )
            return {"loss": loss}
        output = model(images, texts)
        loss = loss_fn(
            output.image_embeds, output.text_embeds, output.logit_scale, output.logit_bias
        )
        backward(loss)
        return {"loss": loss.detach()}


def _max_logit_scale(model: nn.Module) -> float | None:
    return getattr(getattr(model, "config", None), "max_logit_scale", None)


def _capped_temperature(loss_fn: nn.Module, max_scale: float | None) -> Callable[..., torch.Tensor]:
    """`loss_fn` with its temperature argument capped at `max_scale` (CLIP Sec. 2.5).

    The trainer clamps the parameter to [0, ln max_scale] after each optimizer step (open_clip's
    training/train.py); the model's forward never clamps, so that loaded checkpoints give the
    reference logits. In float32, exp(ln 100) is 100.0000076: capping the multiplier here too keeps
    a clamped run's loss at exactly 100 x cosine, as vlkit's training always computed it.
    """
    if max_scale is None:
        return loss_fn

    def capped(
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        return loss_fn(image_emb, text_emb, logit_scale.clamp(max=max_scale), logit_bias)

    return capped
