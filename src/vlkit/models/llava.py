"""LLaVA: a projector per vision token, spliced at T `<image>` placeholders per image.

Liu et al. 2023, "Visual Instruction Tuning", Sec. 4.1 (a linear projection), and LLaVA-1.5
(Liu et al. 2024, "Improved Baselines with Visual Instruction Tuning", Sec. 3.2: a two-layer MLP,
`mlp2x_gelu`): the frozen vision encoder's T tokens are mapped one by one to the LM width by a
`vlkit.fusion.projector.LlavaProjector` and replace the embeddings of T consecutive `<image>`
placeholders; the decoder then reads image and text as one sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from vlkit.models.splicing_vlm import SplicingVLM

__all__ = ["LlavaVLM"]


class LlavaVLM(SplicingVLM):
    """Vision tokens (N, T, Dv) -> `LlavaProjector` (N, T, D) -> spliced -> `DecoderLM`.

    Args: as `SplicingVLM`, with a `LlavaProjector` as connector and `num_image_tokens` = T.
    Placeholder t is vision token t, so `attention_maps` needs no slot-to-image step.

    Loaded from (or saved as) a transformers `LlavaForConditionalGeneration` directory
    (`vlkit.hub.hf_llava`), `vision` is a `VisionTokens` over a ViT's hidden states
    ("hidden:-2", `drop_first` for `vision_feature_select_strategy="default"`), the connector a
    two-layer `LlavaProjector` and the decoder a `DecoderLM`.

    Attributes:
        hf_config: The transformers config.json it was loaded from (the base of the one
            `save_pretrained` writes), else None.
        source_directory: The directory it was loaded from, else None (`save_pretrained` copies
            its processor files from there).
    """

    # Writes a transformers LLaVA directory: (model, directory, processor) -> None. Set by
    # `vlkit.hub.hf_llava`: models cannot import the format layer.
    checkpoint_writer: ClassVar[Callable[[LlavaVLM, str | Path, Any], None] | None] = None
    hf_config: dict[str, Any] | None = None
    source_directory: str | None = None

    def save_pretrained(self, directory: str | Path, processor: Any = None) -> None:
        """Writes a directory that transformers' `LlavaForConditionalGeneration` and
        `AutoProcessor` load (`vlkit.hub.hf_llava.save_llava`); `processor` (a
        `vlkit.data.llava_processor.LlavaProcessor`) adds the tokenizer and image processor."""
        writer = type(self).checkpoint_writer
        if writer is None:
            raise RuntimeError("import vlkit.hub to enable LlavaVLM.save_pretrained")
        writer(self, directory, processor)
