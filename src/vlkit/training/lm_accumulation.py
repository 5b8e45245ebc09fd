"""Exact gradient accumulation for next-token losses: weighted by supervised tokens, not batches.

A causal LM's loss is the mean cross-entropy over the batch's supervised tokens (labels that are
not -100). Split into micro-batches, the tempting recipe -- average each micro-batch's *mean*
loss -- weights a token in a micro-batch with few targets more than one in a micro-batch with
many; transformers' Trainer did exactly that until 4.46 (its `num_items_in_batch` fix,
huggingface/transformers#34198). Here every micro-batch back-propagates

    sum of its tokens' cross-entropy / N,   N = supervised tokens of the whole batch,

so the accumulated `.grad` is the gradient of the full batch's token mean, whatever the
micro-batches' lengths and label counts. Across data-parallel ranks the same holds with N the
global count (`SFTTask` passes `num_tokens`).

Unlike GradCache (`vlkit.training.accumulation`) nothing is cached and replayed: the loss is a
sum over rows, so each micro-batch runs forward and backward exactly once and dropout simply
draws its masks from the RNG as any training forward does. (No RNG replay is needed; the masks
differ from those of one full-batch forward only as two full-batch forwards' masks differ.)

Images concatenated across rows (LLaVA's `(images, 3, H, W)`, LLaVA-NeXT's `(images, V, 3, S, S)`
tiles with `image_sizes` `(images, 2)`: transformers' layouts) are not one entry per row; the
batch then says how many each row holds (`images_per_row`, `collate_sft`) and each micro-batch of
rows takes its rows' images (`IMAGE_INDEXED_KEYS`).

Each micro-batch drops its trailing columns that are padding for every row in it (attention mask
0, no target, no `<image>` placeholder). Under causal attention no kept position attends to a
later one, so the kept logits are unchanged; with left padding there are no such columns and
nothing is trimmed. Micro-batches of short rows then cost what their rows need.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.losses.next_token import IGNORE_INDEX

__all__ = [
    "IMAGE_INDEXED_KEYS",
    "MODEL_INPUT_KEYS",
    "accumulated_lm_backward",
    "model_inputs",
    "supervised_tokens",
]

# The SFT batch keys a generative model may take (transformers' names; vlkit's VLMs use the same).
MODEL_INPUT_KEYS = (
    "input_ids", "attention_mask", "pixel_values", "pixel_attention_mask", "image_sizes"
)  # fmt: skip
# Inputs indexed by image rather than by row when the batch has `images_per_row` (B,).
IMAGE_INDEXED_KEYS = ("pixel_values", "image_sizes")


def supervised_tokens(labels: torch.Tensor) -> int:
    """Targets of the shifted next-token loss: labels[:, 1:] that are not -100 (the label at
    position 0 is never predicted)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def model_inputs(model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """The batch's `MODEL_INPUT_KEYS` that `model.forward` names as parameters (a text-only LM
    gets no `pixel_values`; LLaVA no `pixel_attention_mask`)."""
    inner = getattr(model, "module", model)  # DistributedDataParallel hides the signature
    accepted = inspect.signature(inner.forward).parameters
    return {k: batch[k] for k in MODEL_INPUT_KEYS if k in accepted and batch.get(k) is not None}


def _kept_columns(inputs: dict[str, Any], labels: torch.Tensor, image_token_id: int | None) -> int:
    """Columns up to the last one that is not padding in some row: mask 1, a target or an
    `<image>` placeholder. Without an attention mask nothing is known to be padding."""
    mask = inputs.get("attention_mask")
    if mask is None:
        return labels.shape[1]
    used = (mask != 0) | (labels != IGNORE_INDEX)  # (b, L)
    if image_token_id is not None and "input_ids" in inputs:
        used |= inputs["input_ids"] == image_token_id
    columns = used.any(dim=0).nonzero()
    return int(columns[-1]) + 1 if len(columns) else 1


def _micro_batch(
    inputs: dict[str, Any],
    labels: torch.Tensor,
    rows: slice,
    image_token_id: int | None,
    image_bounds: list[int] | None = None,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Rows `rows` of every input, then the shared trailing padding columns trimmed. With
    `image_bounds` (row r's images are `[bounds[r], bounds[r + 1])`), the image-indexed inputs
    take those rows' images; rows without any give a text-only forward."""
    batch = labels.shape[0]
    part: dict[str, Any] = {}
    for key, value in inputs.items():
        if image_bounds is not None and key in IMAGE_INDEXED_KEYS:
            first, last = image_bounds[rows.start], image_bounds[min(rows.stop, batch)]
            if last > first:
                part[key] = value[first:last]
            continue
        if not torch.is_tensor(value) or value.shape[0] != batch:
            raise ValueError(
                f"batch[{key!r}] has shape {tuple(getattr(value, 'shape', ()))}, not one entry per "
                f"row of the {batch}-row batch, so it cannot be split into micro-batches "
                "(give per-row pixel_values (B, images, C, H, W) or images_per_row, or no "
                "micro_batch_size)"
            )
        part[key] = value[rows]
    if image_bounds is None and "pixel_values" in part and not part["pixel_values"].any():
        # Per-row images that are all zero padding: the rows are text only (collate_sft pads a
        # text row so); a text-only forward, as for a batch without images (the model would
        # find image features and no `<image>` placeholder for them).
        for key in ("pixel_values", "pixel_attention_mask"):
            part.pop(key, None)
    part_labels = labels[rows]
    width = _kept_columns(part, part_labels, image_token_id)
    if width < part_labels.shape[1]:
        for key in ("input_ids", "attention_mask"):
            if key in part:
                part[key] = part[key][:, :width]
        part_labels = part_labels[:, :width]
    return part, part_labels


def _summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum (not mean) of the shifted next-token cross-entropy, only at the target positions
    (the float32 upcast then covers targets, not the whole (B, L, V) block)."""
    targets = labels[:, 1:].to(logits.device)  # (b, L-1)
    chosen = targets != IGNORE_INDEX
    scores = logits[:, :-1][chosen]  # (n, V)
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # as transformers' loss and `next_token_loss`
    return F.cross_entropy(scores, targets[chosen], reduction="sum")


def accumulated_lm_backward(
    model: nn.Module,
    batch: dict[str, Any],
    micro_batch_size: int | None,
    backward_fn: Callable[[torch.Tensor], None] | None = None,
    *,
    num_tokens: float | None = None,
    synchronize: Callable[[list[dict[str, Any]]], list[AbstractContextManager]] | None = None,
) -> torch.Tensor:
    """Accumulates into `.grad` the gradient of the batch's mean next-token loss, in micro-batches.

    Args:
        model: A causal (V)LM whose forward takes some of `MODEL_INPUT_KEYS` and returns an object
            with `.logits` (B, L, V): vlkit's generative models, or transformers' own.
        batch: `input_ids` and `labels` (B, L) (-100 = not a target), optional `attention_mask`
            (B, L), `pixel_values` (B, images, C, H, W) and `pixel_attention_mask`, or images
            concatenated across rows (`pixel_values` (images, ...), `image_sizes`) with
            `images_per_row` (B,); other keys are ignored. Padding may be on either side; only right padding is trimmed.
        micro_batch_size: Rows per forward/backward; None (or >= B): the whole batch at once.
            Peak activation memory follows it; the gradient does not depend on it.
        backward_fn: Runs backward on each micro-batch's share of the loss (the trainer's, through
            a grad scaler); default `loss.backward()`.
        num_tokens: The denominator N; default this batch's supervised tokens. Data-parallel
            ranks pass (global tokens) / (world size), so that averaging the ranks' gradients
            gives the gradient of the global token mean (`SFTTask`).
        synchronize: Called with the micro-batches' model inputs before any forward; returns
            one context per micro-batch to run, entered around its forward and backward.
            Contexts beyond the micro-batches add padding micro-batches (one token, no target:
            they add exactly 0). FSDP ranks use it to issue the same collectives
            (`fsdp_micro_batches.synchronized_micro_batches`).

    Returns:
        The loss, detached: (sum of this batch's token cross-entropies) / N, which with the
        default N is the batch's mean loss (NaN when it has no supervised token, as
        `next_token_loss`).

    Raises:
        ValueError: `micro_batch_size` < 1, an empty batch, or an input without one entry per
            row.
    """
    labels = batch["labels"]
    rows = labels.shape[0]
    if rows == 0:
        raise ValueError("the batch has no rows")
    if micro_batch_size is None:
        micro_batch_size = rows
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    denominator = float(supervised_tokens(labels) if num_tokens is None else num_tokens)
    backward = backward_fn or torch.Tensor.backward
    inputs = model_inputs(model, batch)
    image_token_id = getattr(model, "image_token_id", None)
    if image_token_id is None:  # a transformers VLM keeps it in its config
        image_token_id = getattr(getattr(model, "config", None), "image_token_id", None)
    # vlkit's generative models take transformers' `num_items_in_batch` and then run the LM
    # head on the target positions only (`next_token_loss_from_hidden`); other models return
    # all logits and the targets are picked here.
    inner = getattr(model, "module", model)
    own_loss = "num_items_in_batch" in inspect.signature(inner.forward).parameters
    per_row = batch.get("images_per_row")
    bounds = None if per_row is None else [0, *torch.cumsum(per_row, 0).tolist()]
    parts = [
        _micro_batch(inputs, labels, slice(start, start + micro_batch_size), image_token_id, bounds)
        for start in range(0, rows, micro_batch_size)
    ]
    contexts = (
        [contextlib.nullcontext()] * len(parts)
        if synchronize is None
        else synchronize([part for part, _ in parts])
    )
    if len(contexts) > len(parts):
        parts += [_padding_micro_batch(*parts[0], image_token_id)] * (len(contexts) - len(parts))
    total: torch.Tensor | None = None
    for (part, part_labels), context in zip(parts, contexts, strict=True):
        # 0 / 0 is NaN like the mean of no targets; a rank without targets contributes 0 / N.
        with context:
            if own_loss:
                loss = model(**part, labels=part_labels, num_items_in_batch=denominator).loss
            else:
                logits = model(**part).logits  # (b, l, V)
                loss = _summed_loss(logits, part_labels) / denominator
            # Text rows that reach no trainable parameter (adapters only on the vision side)
            # add exactly 0; under FSDP every rank runs the backward (its collectives).
            if loss.requires_grad or synchronize is not None:
                backward(loss)
        share = loss.detach().double()  # float64: micro-batch shares add up without rounding
        total = share if total is None else total + share
    return total.to(loss.dtype)


def _padding_micro_batch(
    inputs: dict[str, Any], labels: torch.Tensor, image_token_id: int | None
) -> tuple[dict[str, Any], torch.Tensor]:
    """A one-token, text-only micro-batch without a target: its loss and gradients are exactly
    0, but it runs the model (and so its collectives) once more. The token is the batch's first
    (0 if that is `<image>`: a placeholder without an image would reach CogVLM's visual expert)."""
    ids = inputs["input_ids"][:1, :1].clone()
    if image_token_id is not None:
        ids[ids == image_token_id] = 0
    part = {"input_ids": ids}
    if "attention_mask" in inputs:
        part["attention_mask"] = torch.ones_like(inputs["attention_mask"][:1, :1])
    return part, torch.full_like(labels[:1, :1], IGNORE_INDEX)
