"""Generative VLM training: next-token captioning / VQA tasks for the one `Trainer`.

A batch holds images (B, 3, S, S) and text `input_ids` (B, L) with optional `labels` (B, L)
(-100 = not a target). The task prepends T image placeholder tokens to every row (T = tokens the
connector emits per image), so the model sees `[<image> x T] + text`; the placeholders get label
-100 too. The loss is the shifted next-token cross-entropy: logits at position t predict the
label at t + 1, over the positions whose label is not -100 (LLaVA, Liu et al. 2023, Sec. 4.1).

The VLMs themselves come from `vlkit.models.fusion_vlm.build_fusion_vlm` (e.g. "llava" around a
`vlkit.models.frozen_vision.VisionTokens` image tower); their greedy answers are scored by
`vlkit.evaluation.generative`. The VLM trains in the one `Trainer`; its checkpoints hold the
state dict, and resuming restores them into the same architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlkit.data.datasets.vqa_text import IGNORE_INDEX

# Re-exported: their old home was this module (the README and examples imported them here).
from vlkit.evaluation.generative import answer_accuracy, generate_answers, num_image_tokens
from vlkit.losses.next_token import next_token_loss
from vlkit.models.frozen_vision import TOKEN_SOURCES, VisionTokens, tower_tokens

__all__ = [
    "IGNORE_INDEX",
    "TOKEN_SOURCES",
    "CaptionLMTask",
    "ConversationLMTask",
    "TextLMTask",
    "VQALMTask",
    "VisionTokens",
    "answer_accuracy",
    "build_vlm_inputs",
    "generate_answers",
    "next_token_loss",
    "num_image_tokens",
    "tower_tokens",
]


def build_vlm_inputs(
    input_ids: torch.Tensor,
    labels: torch.Tensor | None,
    image_tokens: int,
    image_token_id: int,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Prepends `image_tokens` `<image>` placeholders to every row (one image per row).

    Args:
        input_ids: (B, L) text ids.
        labels: (B, L) targets (-100 = ignored), or None.
        image_tokens: T, placeholders per image.
        image_token_id: The `<image>` id.
        attention_mask: (B, L) text padding mask, or None.

    Returns:
        (B, T + L) ids, (B, T + L) labels with -100 on the T image positions (or None), and
        (B, T + L) attention mask with ones on the image positions (or None).
    """
    b = input_ids.shape[0]
    image = input_ids.new_full((b, image_tokens), image_token_id)  # (B, T)
    ids = torch.cat([image, input_ids], dim=1)  # (B, T + L)
    if labels is not None:
        labels = torch.cat([torch.full_like(image, IGNORE_INDEX), labels], dim=1)  # (B, T + L)
    if attention_mask is not None:
        attention_mask = torch.cat([torch.ones_like(image), attention_mask.long()], dim=1)
    return ids, labels, attention_mask


class CaptionLMTask:
    """Image-conditioned next-token prediction of the whole text (captioning).

    The batch needs `images` (B, 3, S, S) and `input_ids` (B, L); `labels` (B, L) are used when
    present, otherwise every text token that is not `pad_token_id` is a target.

    Args:
        pad_token_id: Padding id of `input_ids` (0 for the CLIP tokenizer).
    """

    requires_labels = False

    def __init__(self, pad_token_id: int = 0) -> None:
        self.pad_token_id = pad_token_id

    def labels(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, L) text labels of a batch."""
        if "labels" in batch:
            return batch["labels"]
        if self.requires_labels:
            raise KeyError(f"{type(self).__name__} needs batch['labels']")
        ids = batch["input_ids"]
        return ids.masked_fill(ids == self.pad_token_id, IGNORE_INDEX)

    def training_step(
        self,
        model: nn.Module,
        batch: dict[str, Any],
        backward: Callable[[torch.Tensor], None],
    ) -> dict[str, torch.Tensor]:
        """Forward, loss, `backward(loss)`; returns {"loss"} (detached)."""
        images = batch["images"]  # (B, 3, S, S)
        ids, labels, _ = build_vlm_inputs(
            batch["input_ids"], self.labels(batch), num_image_tokens(model, images),
            model.image_token_id,
        )  # fmt: skip
        # Right padding sits after every real token, so plain causal attention never lets a
        # target see padding: no attention mask is needed (and SDPA keeps its fast path).
        logits = model(ids, pixel_values=images[:, None]).logits  # (B, T + L, V)
        loss = next_token_loss(logits, labels)
        backward(loss)
        return {"loss": loss.detach()}


class VQALMTask(CaptionLMTask):
    """Image + question -> answer: only the answer tokens (labels != -100) are targets.

    The batch needs `images`, `input_ids` and `labels` (as `EasyVQAQuestions` yields).
    """

    requires_labels = True


class ConversationLMTask:
    """Chat-formatted VLM training: the batch already holds the image placeholders.

    For `vlkit.data.datasets.llava_conversations.collate_conversations` batches: `input_ids`
    (B, L) rendered with the LM's chat template, each `<image>` expanded to the model's
    placeholders, `labels` (B, L) set only on the assistant tokens (IGNORE_INDEX elsewhere, as
    LLaVA's `preprocess_v1`), and `images` (B, N, 3, S, S), the N images of each row in order.
    """

    def training_step(
        self,
        model: nn.Module,
        batch: dict[str, Any],
        backward: Callable[[torch.Tensor], None],
    ) -> dict[str, torch.Tensor]:
        """Forward, loss, `backward(loss)`; returns {"loss"} (detached)."""
        # Right padding: no target sees padding under causal attention (as CaptionLMTask).
        logits = model(batch["input_ids"], pixel_values=batch["images"]).logits  # (B, L, V)
        loss = next_token_loss(logits, batch["labels"])
        backward(loss)
        return {"loss": loss.detach()}


class TextLMTask:
    """Next-token pretraining of a text-only causal LM on `input_ids` / `labels` (B, L) batches
    (the batch's `images` key is only the `Trainer`'s row count)."""

    def training_step(
        self,
        model: nn.Module,
        batch: dict[str, Any],
        backward: Callable[[torch.Tensor], None],
    ) -> dict[str, torch.Tensor]:
        """Forward, loss, `backward(loss)`; returns {"loss"} (detached)."""
        loss = next_token_loss(model(batch["input_ids"]).logits, batch["labels"])
        backward(loss)
        return {"loss": loss.detach()}
