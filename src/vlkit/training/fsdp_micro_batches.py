"""FSDP ranks issue the same collectives whatever their micro-batches hold.

Under FSDP (`vlkit.training.fsdp`) each forward all-gathers the sharded layers it runs and each
backward reduce-scatters their gradients, so ranks that run different layers (images on one rank,
text only on another) or a different number of forwards (more rows) wait on each other forever.
`synchronized_micro_batches` settles it before the first forward with one all_gather and one
all_reduce: every rank runs as many micro-batches as the rank with the most (the extra ones add
0), and a rank without images where another has them runs the vision path on one blank image,
weighted 0. The loss and gradients stay those of the global batch (tests/test_fsdp_mixed_images.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["blank_image_pass", "supports_blank_images", "synchronized_micro_batches"]


# An image's shape (up to 4 dims: LLaVA-NeXT's (V, 3, S, S)) travels in a fixed-size header:
# micro-batches, has an image, dims, shape (4), has image_sizes, the image's (height, width).
_HEADER = 10


def _one_image(part: dict[str, Any]) -> tuple[list[int], list[int] | None]:
    """The shape of one image of a micro-batch (without its batch dims) and its `image_sizes`
    row: per-row pixel_values (b, M, C, H, W) -> (C, H, W); concatenated (N, C, H, W) or
    LLaVA-NeXT's (N, V, 3, S, S) with image_sizes -> one entry."""
    pixels = part["pixel_values"]
    sizes = part.get("image_sizes")
    per_row = sizes is None and pixels.dim() == 5
    shape = list(pixels.shape[2:] if per_row else pixels.shape[1:])
    return shape, None if sizes is None else [int(v) for v in sizes.reshape(-1, 2)[0]]


def _header(parts: list[dict[str, Any]], device: torch.device) -> torch.Tensor:
    header = torch.zeros(_HEADER, dtype=torch.int64, device=device)
    header[0] = len(parts)
    with_images = [part for part in parts if "pixel_values" in part]
    if with_images:
        shape, sizes = _one_image(with_images[0])
        header[1], header[2] = 1, len(shape)
        header[3 : 3 + len(shape)] = torch.tensor(shape)
        if sizes is not None:
            header[7], header[8:10] = 1, torch.tensor(sizes)
    return header


def _blank_inputs(header: list[int], device: torch.device) -> dict[str, torch.Tensor]:
    """One all-zero image of the header's shape (and its image_sizes), as `encode_images` takes it."""
    shape = header[3 : 3 + header[2]]
    blank = {"pixel_values": torch.zeros(1, *shape, device=device)}
    if header[7]:
        blank["image_sizes"] = torch.tensor([header[8:10]], device=device)
    return blank


def supports_blank_images(model: nn.Module) -> bool:
    """Whether `model` splices `encode_images` features after its input embeddings (vlkit's
    `GenerativeVLM`s: SmolVLM, LLaVA, LLaVA-NeXT, the composed kinds but Flamingo)."""
    decoder = getattr(model, "decoder", None)
    return callable(getattr(model, "encode_images", None)) and callable(
        getattr(decoder, "get_input_embeddings", None)
    )


@contextlib.contextmanager
def blank_image_pass(model: nn.Module, blank: dict[str, torch.Tensor]) -> Iterator[None]:
    """Inside the block, the model's next forward also encodes `blank` and adds 0 * (the
    features' sum) to its input embeddings.

    That is where a forward with images encodes them (`GenerativeVLM.embed`: embeddings, then
    `encode_images`), so a text-only forward all-gathers the same sharded layers in the same
    order as one with images, and its backward reaches them after the decoder's (through the
    embeddings), reduce-scattering a zero gradient for every vision parameter as the other
    ranks reduce-scatter theirs. The embeddings' values do not change (x + 0 = x).
    """
    done = False

    def add_blank_features(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        nonlocal done
        if done:  # one blank image per forward
            return output
        done = True
        features = model.encode_images(**blank)  # (I, D)
        # (x * 0).sum(), not x.sum() * 0: an fp16 sum can overflow to inf, and inf * 0 is NaN.
        return output + (features * 0).sum().to(output.dtype)

    handle = model.decoder.get_input_embeddings().register_forward_hook(add_blank_features)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _reduce_scatter_unused(model: nn.Module) -> Iterator[None]:
    """FSDP reduce-scatters zeros for parameters without a gradient in the block: a text-only
    rank never reaches parameters that only image tokens use (CogVLM's visual expert), which
    the ranks with images reduce-scatter."""
    setter = getattr(model, "set_reduce_scatter_unused_params", None)  # absent in older torch
    if setter is None:
        yield
        return
    setter(True)
    try:
        yield
    finally:
        setter(False)


def synchronized_micro_batches(
    model: nn.Module, parts: Sequence[dict[str, Any]], group: Any = None
) -> list[contextlib.AbstractContextManager]:
    """One context per micro-batch to run, so that every rank issues the same FSDP collectives.

    Each forward all-gathers the sharded layers it runs, each backward reduce-scatters their
    gradients: ranks that run different layers (images on one, text only on another) or a
    different number of forwards (more rows) wait on each other forever. An all_gather and an
    all_reduce before the first forward settle it:

    - every rank runs as many micro-batches as the rank with the most; the extra ones are
      padding micro-batches (`lm_accumulation.accumulated_lm_backward`: no target, they add 0);
    - in a micro-batch where some rank has images and another has none, the one without runs
      the vision path on one blank image (`blank_image_pass`) and FSDP reduce-scatters zeros for
      the parameters it leaves unused.

    - every rank's loss has a graph through the decoder (`_graph_through_decoder`), so every
      rank runs each backward even where its rows reach no trainable parameter.

    Everything added is multiplied by 0, so the loss and the gradients are those of the global
    batch. Parameters that no rank uses in a step keep no gradient, as in one process, except in
    a mixed micro-batch, where FSDP gives them zeros (then AdamW's weight decay still applies).

    Args:
        model: The sharded model (`shard_model`).
        parts: This rank's micro-batches' model inputs, in order.
        group: The data-parallel process group (None: the default group).

    Raises:
        RuntimeError: A micro-batch has images on some ranks only and the model cannot encode a
            blank image (`supports_blank_images`); raised on every rank, before any forward.
    """
    device = parts[0]["input_ids"].device
    header = _header(list(parts), device)
    headers = [torch.empty_like(header) for _ in range(dist.get_world_size(group))]
    dist.all_gather(headers, header, group=group)
    rows = [row.tolist() for row in headers]
    count = max(row[0] for row in rows)
    # Row 0: some rank has images in micro-batch k; row 1: some rank has none.
    presence = torch.zeros(2, count, dtype=torch.int32, device=device)
    for k in range(count):
        has = k < len(parts) and "pixel_values" in parts[k]
        presence[0 if has else 1, k] = 1
    dist.all_reduce(presence, op=dist.ReduceOp.MAX, group=group)
    some, missing = presence.bool().tolist()
    mixed = [k for k in range(count) if some[k] and missing[k]]
    if mixed and not supports_blank_images(model):
        raise RuntimeError(
            f"strategy=fsdp: micro-batch {mixed[0]} has images on some ranks and none on "
            "others (or is the padding micro-batch of a rank with fewer rows), and "
            f"{type(model).__name__} cannot run its vision tower on a blank image (no "
            "encode_images), so the ranks' FSDP collectives would not match (a hang): give every "
            "row an image (or none) and every rank as many rows, or train with strategy=ddp"
        )
    template = next((row for row in rows if row[1]), None)
    contexts: list[contextlib.AbstractContextManager] = []
    for k in range(count):
        if k not in mixed:
            contexts.append(_graph_through_decoder(model))
            continue
        has = k < len(parts) and "pixel_values" in parts[k]
        contexts.append(_mixed_micro_batch(model, None if has else _blank_inputs(template, device)))
    return contexts


@contextlib.contextmanager
def _graph_through_decoder(model: nn.Module) -> Iterator[None]:
    """Every rank's loss gets a graph through the decoder, so every rank runs the backward and
    its reduce-scatters: without trainable parameters before the decoder (LLaVA's stage 1 trains
    the connector only; CogVLM's expert sees no text token) a text-only micro-batch's embeddings
    have none, and a rank that skipped (or failed) its backward would leave the others waiting.
    The input embeddings become a leaf that asks for a gradient (thrown away); values unchanged."""
    decoder = getattr(model, "decoder", None)
    embeddings = getattr(decoder, "get_input_embeddings", None)
    if embeddings is None:
        yield
        return

    def needs_grad(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return output if output.requires_grad else output.detach().requires_grad_()

    handle = embeddings().register_forward_hook(needs_grad)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _mixed_micro_batch(model: nn.Module, blank: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """A micro-batch with images on some ranks: unused parameters reduce-scattered as zeros,
    and on a rank without images (`blank` given) the vision path on a blank image."""
    with _reduce_scatter_unused(model), _graph_through_decoder(model):
        if blank is None:
            yield
        else:
            with blank_image_pass(model, blank):
                yield
