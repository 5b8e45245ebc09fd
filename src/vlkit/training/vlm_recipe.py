"""`VLMRecipe`: the config of one generative-VLM training run (`vlkit train-vlm key=value ...`).

One recipe names everything a run needs: the fusion architecture (`FUSION_KINDS`: LLaVA
projector, BLIP-2 Q-Former, Flamingo Perceiver + gated cross-attention, CogVLM visual expert,
early fusion), the task (easy-VQA questions, synthetic-scene captions or scene questions), the
image tower the connectors read (`vision`), the decoder's shape (`decoder`), the step budget and
the optimisation (`optim`, the `OptimConfig` of every training run). `vlkit.recipes.vlm_run.
train_vlm` runs it; a run directory stores it (`vlm_config.json`), so inference reads it back
with the model. It lives in `training` (below `inference`) for that reason.

The flat keys of earlier versions (`batch_size=8`, `layers=2`, `vision=DIR`,
`vision_trainable=true`) still work, in the constructor, on the command line and in the
`vlm_config.json` of older runs, through `VLM_FLAT_KEYS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlkit.models.frozen_vision import hidden_layers
from vlkit.models.fusion_vlm import FUSION_KINDS
from vlkit.overrides import (
    ConfigError,
    accepts_aliases,
    check_fields,
    check_range,
    from_dict,
    to_dict,
)
from vlkit.training.config import FLAT_KEYS, OptimConfig
from vlkit.training.vlm_task import TOKEN_SOURCES

__all__ = ["TASKS", "VLM_FLAT_KEYS", "DecoderShape", "VLMRecipe", "VisionSource"]

TASKS = ("easy_vqa", "scene_captions", "scene_questions")


@dataclass
class VisionSource:
    """The image tower whose tokens feed the connector.

    Attributes:
        path: Directory of a vlkit CLIP checkpoint whose image tower feeds the connector; ""
            builds the `preset` at random (only sensible for "early", which ignores it, and for
            tests).
        preset: Preset used when `path` is "".
        trainable: Train the image tower with the rest (default: frozen, as LLaVA).
        tokens: Which tower tokens the connector reads (`tower_tokens`): "final" (default;
            `small-rn-64`: its 2x2 last feature map) or, for a ResNet tower, an earlier stage's
            finer map ("layer3": 4x4, "layer2": 8x8 at 64x64 pixels); for a ViT tower, hidden
            states ("hidden:-2", LLaVA-1.5's penultimate layer: the model then saves as a
            transformers LLaVA, `LlavaVLM.save_pretrained`).
    """

    path: str = ""
    preset: str = "small-rn-64"
    trainable: bool = False
    tokens: str = "final"

    def __post_init__(self) -> None:
        check_fields(self)
        try:  # a ViT's hidden states, "hidden:-2": LLaVA's feature layer (frozen_vision.py)
            hidden = hidden_layers(self.tokens)
        except ValueError as error:
            raise ConfigError(f"vision.tokens: {error}") from error
        if self.tokens not in TOKEN_SOURCES and hidden is None:
            raise ConfigError(f"vision.tokens: expected one of {', '.join(TOKEN_SOURCES)} or "
                              f"'hidden:<layer>', got {self.tokens!r}")  # fmt: skip


@dataclass
class DecoderShape:
    """The decoder's size, in `vlkit.models.decoder.DecoderConfig`'s field names (the vocabulary
    comes from the run's tokenizer; every head has its own keys and values).

    Attributes:
        hidden_size, intermediate_size: Residual and MLP widths.
        num_layers, num_heads: Depth and attention heads.
    """

    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 4

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads"):
            check_range(f"decoder.{name}", getattr(self, name), 1)
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"decoder.hidden_size: must be a multiple of decoder.num_heads={self.num_heads}, "
                f"got {self.hidden_size}"
            )


def _optim() -> OptimConfig:
    """The recipe's tuned optimisation (`max_steps` stays None: the stages set it from `steps`)."""
    return OptimConfig(batch_size=64, lr=2e-3, warmup_steps=50, weight_decay=0.01,
                       min_lr_ratio=0.05)  # fmt: skip


# The flat keys of earlier versions -> where they live now: the optimisation keys every training
# run shares (`FLAT_KEYS`), the decoder's shape and the vision source.
VLM_FLAT_KEYS: dict[str, str] = {
    **{key: path for key, path in FLAT_KEYS.items() if path.startswith("optim.")},
    "hidden_size": "decoder.hidden_size",
    "intermediate_size": "decoder.intermediate_size",
    "layers": "decoder.num_layers",
    "heads": "decoder.num_heads",
    "vision": "vision.path",
    "vision_preset": "vision.preset",
    "vision_trainable": "vision.trainable",
    "vision_tokens": "vision.tokens",
}


@accepts_aliases(VLM_FLAT_KEYS)
@dataclass
class VLMRecipe:
    """Everything one generative-VLM training run needs.

    Attributes:
        kind: Fusion architecture, one of `vlkit.models.fusion_vlm.FUSION_KINDS`.
        task: "easy_vqa", "scene_captions" or "scene_questions".
        vision: The image tower (`VisionSource`: checkpoint or preset, trainable, tokens).
        decoder: The decoder's shape (`DecoderShape`; the same for every kind).
        optim: Batch, learning rate, warm-up, AdamW (`OptimConfig`); each stage's length is
            `steps` / `connector_only_steps`, its warm-up at most a fifth of it.
        steps: Optimizer steps of the main stage.
        connector_only_steps: LLaVA stage 1 steps before the main stage (decoder frozen).
        num_queries: Q-Former queries / Perceiver latents.
        max_length: Padded text length.
        train_scenes, test_scenes: Scene counts for the scene tasks.
        max_test: Evaluate on the first N test items only (None: all).
        seed, device: Reproducibility and placement ("auto" picks CUDA when present).
    """

    kind: str = "llava"
    task: str = "easy_vqa"
    vision: VisionSource = field(default_factory=VisionSource)
    decoder: DecoderShape = field(default_factory=DecoderShape)
    optim: OptimConfig = field(default_factory=_optim)
    steps: int = 1000
    connector_only_steps: int = 0
    num_queries: int = 8
    max_length: int = 24
    train_scenes: int = 20000
    test_scenes: int = 500
    max_test: int | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_fields(self)
        if self.kind not in FUSION_KINDS:
            raise ConfigError(f"kind: expected one of {', '.join(FUSION_KINDS)}, "
                              f"got {self.kind!r}")  # fmt: skip
        if self.task not in TASKS:
            raise ConfigError(f"task: expected one of {', '.join(TASKS)}, got {self.task!r}")
        check_range("steps", self.steps, 1)
        check_range("connector_only_steps", self.connector_only_steps, 0)
        for name in ("num_queries", "max_length", "train_scenes", "test_scenes", "max_test"):
            check_range(name, getattr(self, name), 1)
        if self.optim.max_steps is not None:
            raise ConfigError("optim.max_steps: a VLM run's length is `steps` (and "
                              "`connector_only_steps`), not optim.max_steps")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The nested settings as JSON-ready values (what `vlm_config.json` stores)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VLMRecipe:
        """A recipe from `to_dict` output, dotted keys or the flat keys of older runs.

        Raises:
            ConfigError: An unknown key (named, with the allowed ones) or a mistyped value.
        """
        return from_dict(cls, data, VLM_FLAT_KEYS)
