"""`get_processor`: the processor (prompt + images -> model inputs) of a generative checkpoint.

SmolVLM / SmolVLM2 / Idefics3 directories get `vlkit.data.smolvlm.SmolVLMProcessor`, LLaVA
directories `vlkit.data.llava_processor.LlavaProcessor` (`hf_llava_processor`), LLaVA-NeXT
directories `vlkit.data.anyres_processor.AnyResProcessor` (`hf_llava_next`); all return
what transformers' `AutoProcessor` on the same directory returns (`input_ids`,
`attention_mask`, `pixel_values`, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.data.smolvlm.processor import SmolVLMProcessor
from vlkit.errors import CheckpointError
from vlkit.hub.composed_checkpoint import is_composed_directory, read_composed_processor
from vlkit.hub.hf_llava_config import is_llava_directory
from vlkit.hub.hf_llava_next import is_llava_next_directory, read_llava_next_processor
from vlkit.hub.hf_llava_processor import read_llava_processor
from vlkit.hub.hf_smolvlm import is_smolvlm_directory
from vlkit.hub.loading import resolve_checkpoint

__all__ = ["get_processor"]


def get_processor(
    name_or_path: str | Path, *, revision: str | None = None, token: str | bool | None = None
) -> Any:
    """The vlkit processor of a generative checkpoint directory (or hub id).

    Returns:
        A `SmolVLMProcessor` (model_type smolvlm / idefics3), a `LlavaProcessor` (llava) or an
        `AnyResProcessor` (llava_next): `processor(text=..., images=...)` -> `input_ids`,
        `attention_mask`, `pixel_values` (and LLaVA-NeXT's `image_sizes`).

    Raises:
        CheckpointError: Not a directory of a supported generative kind, or its processor files
            are missing or broken (named in one line).
    """
    path = resolve_checkpoint(name_or_path, revision=revision, token=token)
    if is_smolvlm_directory(path):
        return SmolVLMProcessor.from_pretrained(path)
    if is_llava_directory(path):
        return read_llava_processor(path)
    if is_llava_next_directory(path):
        return read_llava_next_processor(path)
    if is_composed_directory(path):  # a `vlkit.compose_vlm` model in vlkit's format
        return read_composed_processor(path)
    raise CheckpointError(
        f"{path}: no processor for this checkpoint (get_processor reads SmolVLM / Idefics3 and "
        "LLaVA / LLaVA-NeXT directories: config.json model_type smolvlm, idefics3, llava or "
        "llava_next, and composed VLMs)"
    )
