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
        if self.micro_batch_size and self.micro_batch_size < images.shape[0]:
            loss = accumulated_contrastive_backward(
                model, self.loss_fn, images, texts, self.micro_batch_size, backward_fn=backward
            )
            return {"loss": loss}
        output = model(images, texts)
        loss = self.loss_fn(
            output.image_embeds, output.text_embeds, output.logit_scale, output.logit_bias
        )
        backward(loss)
        return {"loss": loss.detach()}
