"""Batched greedy answers from any `VLMPipeline`: one left-padded `generate` call per batch.

`VLMPipeline.generate` answers one prompt (batch 1). Benchmarks answer thousands, so
`generate_batch` stacks the inputs of several `pipeline.prepare(images, prompt)` calls into one
left-padded batch and runs the model's `generate` once:

* Each row is built by the pipeline's own `prepare` (the model's chat template and processor,
  exactly as `vlkit generate` builds it), so a batched answer is the answer the row gets alone.
* Rows are padded on the LEFT with an attention mask: `generation.generate` then gives each row
  the RoPE positions `cumsum(mask) - 1` (transformers' `_prepare_position_ids_for_generation`),
  which is what makes a left-padded row generate what it would alone (tested in
  tests/test_generative_benchmark.py and tests/parity/test_transformers_llava.py).
* Pixels: SmolVLM / Idefics3 take (B, N, 3, H, W) with all-zero padding images for rows with
  fewer views (transformers' convention, `models/smolvlm.py` drops them) and a
  `pixel_attention_mask`; LLaVA takes the images of all rows flattened in order, (N, 3, H, W).
* LLaVA-NeXT (`LlavaNextPipeline`, and a `ComposedPipeline` of an anyres llava) takes
  transformers' `LlavaNextForConditionalGeneration` layout: the views of all rows' images in
  order, (N, V, 3, S, S), each image zero-padded to the batch's largest view count V, with their
  `image_sizes` (N, 2) concatenated alike. The model reads only the first `1 + rows * cols` views
  of an image, its grid chosen from its size (`AnyResLlavaVLM.encode_images`), so the padding
  views change nothing.
* ONNX exports (`OnnxVLMPipeline`, `OnnxLlavaPipeline`) build the batch as the torch pipeline of
  their input builder (SmolVLM, LLaVA) and run `OnnxVLM.generate` once on it: it follows the
  same padding, position and per-row stop rules (tests/test_onnx_batch_generation.py).
* A row's answer is its ids up to and including its first stop token, as `pipeline.generate`
  returns them for the row alone (a finished row is then filled with the pad token).

Kinds without those conventions (`vlkit train-vlm` runs, BLIP-2, composed models other than an
anyres llava) are answered one request at a time through `pipeline.generate`: same results, no
batching.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlkit.data.anyres_processor import AnyResProcessor
from vlkit.inference.composed_pipeline import ComposedPipeline
from vlkit.inference.llava_pipeline import LlavaNextPipeline, LlavaPipeline
from vlkit.inference.onnx_vlm_pipeline import OnnxLlavaPipeline, OnnxPipelineMixin, OnnxVLMPipeline
from vlkit.inference.smolvlm_pipeline import SmolVLMPipeline
from vlkit.inference.vlm_pipeline import VLMInputs, VLMPipeline

__all__ = ["Request", "batchable", "generate_batch"]

Request = tuple[Sequence[Any], str]
"""(RGB PIL images, user prompt) of one sample."""


def batchable(pipeline: VLMPipeline) -> bool:
    """Whether `generate_batch` runs `pipeline`'s requests as one batch (else one by one).

    Exact types: `ComposedPipeline` subclasses `LlavaPipeline` but lays its pixels out
    differently (one tensor per prompt), so it takes the one-by-one path, except for an anyres
    llava, whose `prepare` gives LLaVA-NeXT's views and `image_sizes`.
    """
    kinds = (SmolVLMPipeline, LlavaPipeline, LlavaNextPipeline, OnnxVLMPipeline, OnnxLlavaPipeline)
    return type(pipeline) in kinds or _anyres(pipeline)


def _anyres(pipeline: VLMPipeline) -> bool:
    """A LLaVA-NeXT layout: (N, V, 3, S, S) views with `image_sizes` (N, 2)."""
    return type(pipeline) in (LlavaNextPipeline, ComposedPipeline) and isinstance(
        getattr(pipeline, "processor", None), AnyResProcessor
    )


def _stop_ids(pipeline: VLMPipeline) -> set[int]:
    return set(pipeline.stop_token_ids)


def _cut(ids: list[int], stops: set[int]) -> list[int]:
    """The ids up to and including the first stop token: what `pipeline.generate` returns for
    the row alone (the later ids are the pad filler of a finished row)."""
    for n, token in enumerate(ids):
        if token in stops:
            return ids[: n + 1]
    return ids


def _pad_id(pipeline: VLMPipeline) -> int:
    """The filler of padded prompt positions (masked out, so any id works) and of finished rows."""
    pad = getattr(pipeline.model, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    stops = sorted(_stop_ids(pipeline))
    return stops[0] if stops else 0


def _left_pad(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    """(B, P) of 1-D rows, each right-aligned (left padding with `value`)."""
    longest = max(row.shape[0] for row in rows)
    out = rows[0].new_full((len(rows), longest), value)
    for i, row in enumerate(rows):
        out[i, longest - row.shape[0] :] = row
    return out


def _stack_images(prepared: list[VLMInputs], key: str, dims: int) -> torch.Tensor | None:
    """(B, N, ...) of per-row (1, N_i, ...) tensors, padded with zeros to the largest N_i and
    spatial size (SmolVLM's `pad_images`: zero images and zero mask are padding)."""
    tensors = [inputs.model_inputs.get(key) for inputs in prepared]
    if all(t is None for t in tensors):
        return None
    if any(t is None for t in tensors):
        raise ValueError(f"rows disagree on {key}: some have images and some do not")
    shape = [max(t.shape[d] for t in tensors) for d in range(1, dims)]  # type: ignore[union-attr]
    out = tensors[0].new_zeros((len(tensors), *shape))  # type: ignore[union-attr]
    for i, t in enumerate(tensors):
        region = (i, *(slice(0, s) for s in t.shape[1:]))  # type: ignore[union-attr]
        out[region] = t[0]  # type: ignore[index]
    return out


def _concat_views(prepared: list[VLMInputs]) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaVA-NeXT's (N, V, 3, S, S) views and (N, 2) `image_sizes` of all rows' images in row
    order (the order of their `<image>` placeholders across the batch), each image's views
    zero-padded to the largest V: the model reads an image's first `1 + rows * cols` views only.
    """
    pixels: list[torch.Tensor] = [inputs.model_inputs["pixel_values"] for inputs in prepared]
    views = max(p.shape[1] for p in pixels)  # (N_i, V_i, 3, S, S) per row
    out = pixels[0].new_zeros((sum(p.shape[0] for p in pixels), views, *pixels[0].shape[2:]))
    first = 0
    for p in pixels:
        out[first : first + p.shape[0], : p.shape[1]] = p
        first += p.shape[0]
    sizes = torch.cat([inputs.model_inputs["image_sizes"] for inputs in prepared])  # (N, 2)
    return out, sizes


def _batch_inputs(pipeline: VLMPipeline, prepared: list[VLMInputs]) -> VLMInputs:
    """One left-padded batch of per-row `prepare` outputs."""
    pad = _pad_id(pipeline)
    ids = _left_pad([inputs.input_ids[0] for inputs in prepared], pad)
    masks = []
    for inputs in prepared:
        mask = inputs.model_inputs.get("attention_mask")
        masks.append(torch.ones_like(inputs.input_ids[0]) if mask is None else mask[0])
    model_inputs: dict[str, torch.Tensor | None] = {"attention_mask": _left_pad(masks, 0)}
    if _anyres(pipeline):
        pixels = prepared[0].model_inputs.get("pixel_values")
        if pixels is not None:  # (all rows have images or none: `generate_batch` checks)
            model_inputs["pixel_values"], model_inputs["image_sizes"] = _concat_views(prepared)
    elif isinstance(pipeline, SmolVLMPipeline):
        model_inputs["pixel_values"] = _stack_images(prepared, "pixel_values", 5)
        model_inputs["pixel_attention_mask"] = _stack_images(prepared, "pixel_attention_mask", 4)
    else:  # LLaVA: every row's images, flattened in row order, as its placeholders are
        pixels = [inputs.model_inputs.get("pixel_values") for inputs in prepared]
        present = [p for p in pixels if p is not None]
        model_inputs["pixel_values"] = torch.cat(present) if present else None
    return VLMInputs(ids, model_inputs)


def _new_tokens(
    pipeline: VLMPipeline, batch: VLMInputs, max_new_tokens: int, **generate_options: Any
) -> list[list[int]]:
    """Each row's new ids (finished rows padded) from one `generate` call on the whole batch."""
    if isinstance(pipeline, OnnxPipelineMixin):  # onnxruntime's generation, numpy arrays
        sequences = pipeline.generate_sequences(batch, max_new_tokens, **generate_options)
        return sequences[:, batch.input_ids.shape[1] :].tolist()
    sequences = pipeline.model.generate(
        batch.input_ids,
        **batch.model_inputs,
        max_new_tokens=max_new_tokens,
        eos_token_id=pipeline.eos_token_id,
        **generate_options,
    )  # (B, P + N)
    return sequences[:, batch.input_ids.shape[1] :].tolist()


@torch.no_grad()
def generate_batch(
    pipeline: VLMPipeline,
    requests: Sequence[Request],
    max_new_tokens: int = 16,
    **generate_options: Any,
) -> list[str]:
    """Greedy answers (decoded, special tokens dropped) to (images, prompt) requests.

    Args:
        pipeline: From `vlkit.inference.vlm_loading.load_vlm`.
        requests: (RGB PIL images, user prompt) per sample; the prompt goes through the
            model's chat template as in `vlkit generate`.
        max_new_tokens: Generation budget per answer; each row stops at the pipeline's stop
            tokens.
        **generate_options: Further `generate` keywords (`sampling_options(...)`, ...).

    Returns:
        One answer per request, in order (not stripped).
    """
    if not requests:
        return []
    if not batchable(pipeline) or len(requests) == 1:
        return [
            pipeline.decode(
                pipeline.generate(
                    pipeline.prepare(list(images), prompt), max_new_tokens, **generate_options
                )
            )
            for images, prompt in requests
        ]
    prepared = [pipeline.prepare(list(images), prompt) for images, prompt in requests]
    if len({inputs.model_inputs.get("pixel_values") is None for inputs in prepared}) > 1:
        # Rows with and without images cannot share one pixel tensor: answer them one by one.
        return [
            pipeline.decode(pipeline.generate(inputs, max_new_tokens, **generate_options))
            for inputs in prepared
        ]
    batch = _batch_inputs(pipeline, prepared)
    generate_options.setdefault("pad_token_id", _pad_id(pipeline))
    rows = _new_tokens(pipeline, batch, max_new_tokens, **generate_options)
    stops = _stop_ids(pipeline)
    return [pipeline.decode(_cut(row, stops)) for row in rows]
