"""Five generative-VLM fusion architectures behind one interface, for side-by-side comparison.

`build_fusion_vlm(FusionVLMConfig(kind=...), vision)` returns one of

=========  ===================================================  ==========================
kind       architecture                                         `num_image_tokens`
=========  ===================================================  ==========================
llava      vision -> MLP projector -> spliced at placeholders   T (vision tokens)
           (Liu et al. 2023 / 2024)
qformer    vision -> Q-Former queries -> linear -> spliced      `num_queries`
           (BLIP-2 stage 2, Li et al. 2023, Sec. 3.3)
flamingo   vision -> Perceiver -> gated cross-attention in the  1 (the `<image>` marker)
           LM (Alayrac et al. 2022, Sec. 2)
cogvlm     LLaVA splicing + a visual expert (QKV, FFN) in each  T
           layer (Wang et al. 2023, Sec. 2.1)
early      pixels -> linear patch embedding -> spliced, no       (image_size / patch_size)^2
           vision encoder (Chameleon Team 2024, Sec. 2)
=========  ===================================================  ==========================

One file and class each: `llava.LlavaVLM`, `qformer_vlm.QFormerVLM`, `flamingo.FlamingoVLM`,
`cogvlm.CogVLM`, `early_fusion_vlm.EarlyFusionVLM`; all but Flamingo splice image features into
the token sequence (`splicing_vlm.SplicingVLM`). All five share the `DecoderConfig`, so the language model is the same size; the connector,
resampler, cross-attention and expert weights are the fusion cost. Every model has
`image_token_id`, `num_image_tokens`, `config`,
`forward(input_ids (B, L), pixel_values=(B, 1, 3, H, W) | (B, 3, H, W) | None,
attention_mask=None, labels=None, *, use_cache=False)` -> `.logits` (B, L, V) and `.loss` (the
shifted next-token cross-entropy of `labels`, -100 ignored, as transformers' causal LMs),
`generate(input_ids, pixel_values=None, attention_mask=None, *, max_new_tokens=20,
eos_token_id=None, streamer=None, ...)` -> (B, P + N) ids for left-padded prompts whose
placeholders follow the padding, and `attention_maps(input_ids, pixel_values,
attention_mask=None)` -> (B, L, T) (for "early", T is the number of patches).

Generation uses the KV cache for every kind (`generation.generate`); llava, qformer and early go
through `GenerativeVLM.generate` and flamingo through `FlamingoVLM.generate` (images resampled
once, cross-attention keys/values cached), so they also accept `cache_implementation="static"`;
cogvlm decodes with the dynamic cache only.

Frozen vision towers: `freeze_vision(model)` sets `requires_grad=False` on `model.vision` and puts
it in eval mode; the models' `train()` keeps a fully frozen tower in eval mode
(`frozen_vision.keep_frozen_in_eval`), so BatchNorm
statistics of a pretrained encoder are never updated. A tower that is frozen before it is passed
to `build_fusion_vlm` is treated the same way. The builder's dry run (to count vision tokens) runs
in eval mode under `no_grad` and restores the tower's mode.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlkit.fusion.projector import LlavaProjector
from vlkit.models.cogvlm import CogVLM, CogVLMDecoder
from vlkit.models.decoder import DecoderConfig, DecoderLM
from vlkit.models.early_fusion_vlm import EarlyFusionVLM, PatchEmbedding
from vlkit.models.flamingo import FlamingoVLM
from vlkit.models.frozen_vision import VisionTokens
from vlkit.models.llava import LlavaVLM
from vlkit.models.qformer_vlm import QFormerConnector, QFormerVLM
from vlkit.models.splicing_vlm import SplicingVLM

__all__ = [
    "build_fusion_vlm_on_clip",
    "FUSION_KINDS",
    "CogVLM",
    "EarlyFusionVLM",
    "FlamingoVLM",
    "FusionVLMConfig",
    "LlavaVLM",
    "QFormerVLM",
    "SplicingVLM",
    "build_fusion_vlm",
    "freeze_vision",
    "trainable_parameters",
]

FUSION_KINDS = ("llava", "qformer", "flamingo", "cogvlm", "early")


@dataclass
class FusionVLMConfig:
    """Shape of a fusion VLM (JSON round-trippable with `to_dict` / `from_dict`).

    Attributes:
        kind: One of `FUSION_KINDS`.
        decoder: The LM; its `vocab_size` already includes `image_token_id`.
        image_token_id: Id of the `<image>` placeholder / marker.
        vision_dim: Width Dv of the vision tokens; 0 = measured by the builder's dry run (the
            built model's `config` holds the measured value). Unused by "early".
        num_queries: Q-Former queries ("qformer") or Perceiver latents ("flamingo").
        projector: LLaVA projector type for "llava" and "cogvlm" (see `build_projector`).
        qformer_layers: Q-Former depth.
        perceiver_layers: Perceiver Resampler depth.
        cross_attention_every: Flamingo: a gated cross-attention block before every n-th layer.
        image_size: Input side S (the builder's dry run; the early-fusion patch grid).
        patch_size: Early-fusion patch side.
    """

    kind: str
    decoder: DecoderConfig
    image_token_id: int
    vision_dim: int = 0
    num_queries: int = 8
    projector: str = "mlp2x_gelu"
    qformer_layers: int = 2
    perceiver_layers: int = 2
    cross_attention_every: int = 1
    image_size: int = 64
    patch_size: int = 8

    def __post_init__(self) -> None:
        if self.kind not in FUSION_KINDS:
            raise ValueError(f"kind must be one of {FUSION_KINDS}, got {self.kind!r}")
        if not 0 <= self.image_token_id < self.decoder.vocab_size:
            raise ValueError(
                f"image_token_id {self.image_token_id} is outside the decoder vocabulary "
                f"({self.decoder.vocab_size})"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionVLMConfig:
        """Inverse of `to_dict`; unknown keys raise an error that names them."""
        data = dict(data)
        decoder = _build(DecoderConfig, dict(data.pop("decoder", {})), "decoder")
        return _build(cls, {**data, "decoder": decoder}, "FusionVLMConfig")

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> FusionVLMConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _build(kind: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(kind) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown keys in {where} config: {unknown}")
    return kind(**values)


@torch.no_grad()
def _vision_shape(vision: nn.Module, image_size: int) -> tuple[int, int]:
    """(T, Dv) of the vision tokens, from a dry run in eval mode (BatchNorm stats untouched)."""
    was_training = vision.training
    vision.eval()
    try:
        param = next(vision.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        device = param.device if param is not None else torch.device("cpu")
        tokens = vision(torch.randn(1, 3, image_size, image_size, dtype=dtype, device=device))
    finally:
        vision.train(was_training)
    return int(tokens.shape[1]), int(tokens.shape[2])  # (1, T, Dv)


def build_fusion_vlm(config: FusionVLMConfig, vision: nn.Module | None) -> nn.Module:
    """Build a randomly initialised fusion VLM around a (possibly frozen, pretrained) vision tower.

    Args:
        config: Architecture and sizes.
        vision: Module (N, 3, H, W) -> (N, T, Dv) tokens; ignored (may be None) for "early".

    Returns:
        `LlavaVLM`, `QFormerVLM`, `FlamingoVLM`, `CogVLM` or `EarlyFusionVLM` (all but
        Flamingo are `SplicingVLM`s), with `config` set to the resolved config (measured
        `vision_dim`).

    Raises:
        ValueError: When `vision` is missing or its width contradicts `config.vision_dim`.
    """
    dec = config.decoder
    if config.kind == "early":
        patches = PatchEmbedding(config.image_size, config.patch_size, dec.hidden_size)
        return EarlyFusionVLM(
            patches, nn.Identity(), DecoderLM(dec), config.image_token_id,
            patches.num_patches, config,
        )  # fmt: skip
    if vision is None:
        raise ValueError(f"kind {config.kind!r} needs a vision module")
    count, width = _vision_shape(vision, config.image_size)
    if config.vision_dim not in (0, width):
        raise ValueError(f"config.vision_dim={config.vision_dim} but the vision emits {width}")
    config = replace(config, vision_dim=width)
    if config.kind == "flamingo":
        return FlamingoVLM(
            vision, width, dec, config.image_token_id, config.num_queries,
            config.perceiver_layers, config.cross_attention_every, config,
        )  # fmt: skip
    if config.kind == "qformer":
        connector = QFormerConnector(
            width, dec.hidden_size, config.num_queries, config.qformer_layers, dec.num_heads
        )
        return QFormerVLM(
            vision, connector, DecoderLM(dec), config.image_token_id, config.num_queries, config
        )
    projector = LlavaProjector(width, dec.hidden_size, config.projector)
    if config.kind == "cogvlm":
        return CogVLM(vision, projector, CogVLMDecoder(dec), config.image_token_id, count, config)
    return LlavaVLM(vision, projector, DecoderLM(dec), config.image_token_id, count, config)


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters with `requires_grad` (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def freeze_vision(model: nn.Module) -> nn.Module:
    """Freeze `model.vision` (no gradients, eval mode kept across `model.train()`); returns model.

    For "early" the `vision` module is the trainable patch embedding: freezing it is allowed but
    leaves the image representation random.
    """
    model.vision.requires_grad_(False)
    model.vision.eval()
    return model


def build_fusion_vlm_on_clip(
    fusion_config: FusionVLMConfig,
    clip: nn.Module,
    vision_trainable: bool = False,
    vision_tokens: str = "final",
) -> nn.Module:
    """The fusion VLM (a `vlkit train-vlm` run's model) around `clip`'s image tower (frozen unless `vision_trainable`).

    Args:
        fusion_config: The fusion architecture and sizes.
        clip: The CLIP model whose image tower feeds the connector.
        vision_trainable: Train the tower with the rest (else frozen, eval mode, no gradients).
        vision_tokens: Which tower tokens the connector reads (`tower_tokens`).
    """
    vision = VisionTokens(clip.vision, vision_tokens, freeze=not vision_trainable)
    return build_fusion_vlm(fusion_config, vision)
