"""Exact large-batch contrastive gradients with micro-batches (GradCache; Gao et al. 2021).

A contrastive loss couples every pair in the batch, so summing per-micro-batch losses (what
open_clip's `accum_freq` approximates by caching features) is not the full-batch gradient, and
re-running the towers with fresh dropout changes the function being differentiated. Here:

1. Embed every micro-batch without autograd, remembering the RNG state before each one.
2. Compute the loss on the full batch of (detached) embeddings, with the model's own
   `logit_scale` / `logit_bias` parameters in the graph; backward once. This gives the exact
   gradient for the temperature and bias, and d(loss)/d(embedding) for every sample.
3. Re-run each micro-batch with autograd from its saved RNG state (so dropout and drop-path
   masks are the same as in step 1) and back-propagate the cached embedding gradients.

The accumulated `.grad` then equals the gradient of the full-batch loss for every parameter,
while activation memory follows the micro-batch. Batch-norm running statistics are updated once
per sample (the no-grad pass restores them), as a single full-batch forward would.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

LossFn = Callable[..., torch.Tensor]


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _embed(model: nn.Module, images: torch.Tensor, texts: torch.Tensor, mask: torch.Tensor | None):
    return (
        model.encode_image(images, normalize=True),
        model.encode_text(texts, mask, normalize=True),
    )


def accumulated_contrastive_backward(
    model: nn.Module,
    loss_fn: LossFn,
    images: torch.Tensor,
    texts: torch.Tensor,
    micro_batch_size: int,
    attention_mask: torch.Tensor | None = None,
    backward_fn: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Accumulates into `.grad` the exact gradient of `loss_fn` over the whole batch.

    Args:
        model: A CLIP-like model with `encode_image`, `encode_text`, `temperature()` and
            `logit_bias` (None or a parameter).
        loss_fn: Called as `loss_fn(image_emb, text_emb, logit_scale, logit_bias)` on normalized
            embeddings, with `logit_scale` the multiplier exp(s) (open_clip's convention).
        images: (B, C, H, W).
        texts: (B, L) token ids.
        micro_batch_size: Samples per re-run; peak activation memory scales with it.
        attention_mask: Optional (B, L) text padding mask.
        backward_fn: Runs backward on the loss (e.g. through a grad scaler); default
            `loss.backward()`. A scaled loss scales the cached gradients consistently.

    Returns:
        The full-batch loss (detached).
    """
    batch = images.shape[0]
    if texts.shape[0] != batch:
        raise ValueError(f"{batch} images but {texts.shape[0]} texts")
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    device = images.device
    slices = [slice(start, start + micro_batch_size) for start in range(0, batch, micro_batch_size)]

    def mask_of(part: slice) -> torch.Tensor | None:
        return None if attention_mask is None else attention_mask[part]

    # 1. Embeddings without autograd; the RNG state before each micro-batch is kept for replay.
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    states, image_parts, text_parts = [], [], []
    with torch.no_grad():
        for part in slices:
            states.append(_rng_state(device))
            image_emb, text_emb = _embed(model, images[part], texts[part], mask_of(part))
            image_parts.append(image_emb)
            text_parts.append(text_emb)
    state_after = _rng_state(device)
    with torch.no_grad():  # undo the no-grad pass's batch-norm statistics updates
        for name, value in model.named_buffers():
            value.copy_(buffers[name])

    # 2. The full-batch loss on cached embeddings; exact gradients for scale and bias.
    image_all = torch.cat(image_parts).requires_grad_(True)
    text_all = torch.cat(text_parts).requires_grad_(True)
    loss = loss_fn(image_all, text_all, model.temperature(), model.logit_bias)
    (backward_fn or torch.Tensor.backward)(loss)

    # 3. Replay each micro-batch with autograd and push the cached embedding gradients through.
    for part, state in zip(slices, states, strict=True):
        _set_rng_state(state, device)
        image_emb, text_emb = _embed(model, images[part], texts[part], mask_of(part))
        torch.autograd.backward([image_emb, text_emb], [image_all.grad[part], text_all.grad[part]])
    _set_rng_state(state_after, device)
    return loss.detach()
