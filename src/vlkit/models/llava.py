"""LLaVA: a projector per vision token, spliced at T `<image>` placeholders per image.

Liu et al. 2023, "Visual Instruction Tuning", Sec. 4.1 (a linear projection), and LLaVA-1.5
(Liu et al. 2024, "Improved Baselines with Visual Instruction Tuning", Sec. 3.2: a two-layer MLP,
`mlp2x_gelu`): the frozen vision encoder's T tokens are mapped one by one to the LM width by a
`vlkit.fusion.projector.LlavaProjector` and replace the embeddings of T consecutive `<image>`
placeholders; the decoder then reads image and text as one sequence.
"""

from __future__ import annotations

from vlkit.models.splicing_vlm import SplicingVLM

__all__ = ["LlavaVLM"]


class LlavaVLM(SplicingVLM):
    """Vision tokens (N, T, Dv) -> `LlavaProjector` (N, T, D) -> spliced -> `DecoderLM`.

    Args: as `SplicingVLM`, with a `LlavaProjector` as connector and `num_image_tokens` = T.
    Placeholder t is vision token t, so `attention_maps` needs no slot-to-image step.
    """
