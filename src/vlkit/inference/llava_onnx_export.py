"""ONNX export of a transformers LLaVA checkpoint (`LlavaForConditionalGeneration`, LLaVA-1.5).

`export_llava_onnx(source, out_dir)` (`vlkit export --model LLAVA_DIR --format onnx`) writes the
layout of the SmolVLM export (`smolvlm_onnx_export`, onnx-community's file names), with the
one difference that a LLaVA image has no pixel mask and no padding images:

    OUT/config.json, generation_config.json, preprocessor_config.json, processor_config.json,
        tokenizer*.json, special_tokens_map.json, chat_template.* (the source's files, as they are)
    OUT/onnx/vision_encoder.onnx        pixel_values (N, 3, H, W) float32
                                        -> image_features (N, T, D): the tower's selected hidden
                                        states through the projector (`LlavaVLM`), one row of T
                                        `<image>` placeholders' features per image
    OUT/onnx/embed_tokens.onnx, decoder_model_merged.onnx   as SmolVLM's (KV cache, past >= 0)
    OUT/onnx/*_int8.onnx, *_q4.onnx     with quantize="int8" / "int4"
    OUT/onnx/vlkit_export.json          the `ExportReport`

Tracing, the check against torch (1e-4 on the prompt logits and two cached decode steps of two
prompts: one image; a left-padded batch of a two-image and a one-image row), quantization and
the atomic write are `smolvlm_onnx_export.export_verified`'s; only the vision graph and the
verification prompts are LLaVA's. LLaVA-NeXT (anyres tiles, `model_type` llava_next) is not
handled: its token count depends on each image's size.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from vlkit.hub.hf_llava import load_llava
from vlkit.hub.hf_llava_config import is_llava_directory, llava_tower
from vlkit.inference.smolvlm_onnx_export import (
    VISION_FILE,
    check_export_options,
    export_text_graphs,
    export_verified,
    to_onnx,
)
from vlkit.inference.vlm_onnx_report import DEFAULT_ATOL, ExportReport
from vlkit.models.decoder.masks import position_ids_from_mask
from vlkit.models.llava import LlavaVLM
from vlkit.models.smolvlm import GenerativeVLM

__all__ = ["LlavaVisionEncoder", "export_llava_onnx", "llava_verification_prompts"]


class LlavaVisionEncoder(nn.Module):
    """(N, 3, H, W) images -> (N, T, D) projected features (`LlavaVLM.encode_images` without
    the drop of all-zero images: a LLaVA processor makes no padding images)."""

    def __init__(self, model: LlavaVLM) -> None:
        super().__init__()
        self.vision = model.vision
        self.connector = model.connector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.connector(self.vision(pixel_values))


def _export_graphs(model: GenerativeVLM, opset: int | None) -> dict[str, bytes]:
    size = llava_tower(model).config.image_size  # type: ignore[arg-type]
    # Batch 2 as the example: torch.export specialises an axis of size 0 or 1.
    vision = to_onnx(
        LlavaVisionEncoder(model).eval(),  # type: ignore[arg-type]
        (torch.randn(2, 3, size, size),),
        ["pixel_values"],
        ["image_features"],
        ({0: torch.export.Dim("num_images")},),
        opset,
    )
    return {VISION_FILE: vision, **export_text_graphs(model, opset)}


def llava_verification_prompts(
    model: GenerativeVLM, seed: int = 0, count: int = 2
) -> list[dict[str, torch.Tensor]]:
    """`count` prompts (input_ids, attention_mask, position_ids, pixel_values (N, 3, H, W) in
    row-major image order); even ones are one row with one image, odd ones a left-padded batch
    of a two-image row and a one-image row (as `smolvlm_onnx_verify.verification_prompts`)."""
    generator = torch.Generator().manual_seed(seed)
    size = llava_tower(model).config.image_size  # type: ignore[arg-type]
    tokens = model.num_image_tokens  # type: ignore[attr-defined]
    vocab, image_token = model.decoder.config.vocab_size, model.image_token_id

    def text(n: int) -> list[int]:
        ids = torch.randint(0, vocab, (n,), generator=generator).tolist()
        return [i if i != image_token else (i + 1) % vocab for i in ids]

    prompts = []
    for index in range(count):
        images = [[1], [2, 1]][index % 2]
        rows = [text(3) + ([image_token] * tokens + text(2)) * n + text(3) for n in images]
        width = max(len(row) for row in rows)
        ids = torch.tensor([[0] * (width - len(row)) + row for row in rows])
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
        pixels = torch.rand(sum(images), 3, size, size, generator=generator) * 2 - 1
        prompts.append({
            "input_ids": ids, "attention_mask": mask, "position_ids": position_ids_from_mask(mask),
            "pixel_values": pixels,
        })  # fmt: skip
    return prompts


def export_llava_onnx(
    source: str | Path,
    out_dir: str | Path,
    *,
    quantize: str | None = None,
    block_size: int = 32,
    opset: int | None = None,
    atol: float = DEFAULT_ATOL,
    model: LlavaVLM | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportReport:
    """Exports a transformers LLaVA directory to OUT (module docstring).

    Args: as `smolvlm_onnx_export.export_smolvlm_onnx` (quantize None / "int8" / "int4",
        block_size 32 / 64 / 128, opset >= 18, atol, an in-memory `model`, `progress` notes).

    Returns:
        The report also written to OUT/onnx/vlkit_export.json.

    Raises:
        ValueError: `source` is not a LLaVA directory, OUT exists, bad options, a non-float32
            or too large model; `ExportMismatch` when onnxruntime and torch disagree.
        vlkit.errors.CheckpointError: An unsupported or broken checkpoint.
    """
    source, out = Path(source), Path(out_dir)
    check_export_options(quantize, block_size, opset, out)
    if not is_llava_directory(source):
        raise ValueError(
            f"{source}: not a LLaVA checkpoint directory (config.json with model_type llava)"
        )
    note = progress or (lambda _: None)
    if model is None:
        note("loading the model")
        model = load_llava(source)
    if not isinstance(model, LlavaVLM):
        raise ValueError(f"{source}: the LLaVA export takes a LlavaVLM, got {type(model).__name__}")
    size = llava_tower(model).config.image_size
    return export_verified(model, source, out, _export_graphs, llava_verification_prompts, size,
                           quantize=quantize, block_size=block_size, opset=opset, atol=atol,
                           note=note)  # fmt: skip
