"""The training run's configuration: typed, nested dataclasses written next to the checkpoints.

    TrainConfig(model="tiny", data=DataConfig(source="shapes"), optim=OptimConfig(lr=1e-3))
    vlkit train model=tiny data.source=shapes optim.lr=1e-3 out_dir=runs/x

`TrainConfig` holds what the run is (model, seed, device, precision, where it writes), the checks
that span its sections, and its JSON round trip. Its five sections live in
`vlkit.training.config_sections` and are re-exported here: `data` (the data source and how it is
read), `optim` (batch, schedule, AdamW, what trains), `loss`, `checkpoint` and `eval` (periodic
evaluation on held-out data). The flat keys of earlier versions (`batch_size=8`, `data=shapes`,
`checkpoint_every=100`) still work everywhere, through `FLAT_KEYS`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vlkit.overrides import (
    ConfigError,
    accepts_aliases,
    check_fields,
    check_range,
    from_dict,
    to_dict,
)
from vlkit.training.config_sections import (
    EVAL_SOURCES,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LossConfig,
    OptimConfig,
)
from vlkit.training.config_sections import DataSource as DataSource  # importable here as before

Precision = Literal["fp32", "bf16", "fp16"]
# The parts `gradient_checkpointing` can name (`vlkit.training.memory`): the LM decoder (a
# CLIP's text tower) and the vision tower.
CHECKPOINT_PARTS: tuple[str, ...] = ("language", "vision")


def checkpoint_parts(value: Any, key: str = "gradient_checkpointing") -> tuple[str, ...]:
    """The parts a `gradient_checkpointing` value names: True / "true" / "all" -> every part,
    False / "false" / "none" -> none, "language,vision" -> those.

    Raises:
        ConfigError: Another value or an unknown part (the message names `key`).
    """
    if isinstance(value, bool):
        return CHECKPOINT_PARTS if value else ()
    if isinstance(value, str):
        words = [w.strip().lower() for w in value.split(",") if w.strip()]
        if words in (["true"], ["all"]):
            return CHECKPOINT_PARTS
        if words in ([], ["false"], ["none"]):
            return ()
        unknown = [w for w in words if w not in CHECKPOINT_PARTS]
        if not unknown:
            return tuple(p for p in CHECKPOINT_PARTS if p in words)
    raise ConfigError(
        f"{key}: expected true, false or parts from {', '.join(CHECKPOINT_PARTS)} "
        f"(comma-separated), got {value!r}"
    )


# The flat keys of earlier versions -> where they live now. `vlkit train batch_size=8`, a
# `CONFIG = dict(batch_size=8)` file, an old run's train_config.json and `TrainConfig(batch_size=8)`
# all go through this one table.
FLAT_KEYS: dict[str, str] = {
    "data": "data.source",
    "data_root": "data.root",
    "annotations": "data.annotations",
    "image_column": "data.image_column",
    "caption_column": "data.caption_column",
    "shards": "data.shards",
    "shuffle_buffer": "data.shuffle_buffer",
    "num_samples": "data.num_samples",
    "augment": "data.augment",
    "num_workers": "data.num_workers",
    "batch_size": "optim.batch_size",
    "micro_batch_size": "optim.micro_batch_size",
    "accumulation_steps": "optim.accumulation_steps",
    "epochs": "optim.epochs",
    "max_steps": "optim.max_steps",
    "max_seconds": "optim.max_seconds",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "betas": "optim.betas",
    "eps": "optim.eps",
    "warmup_steps": "optim.warmup_steps",
    "min_lr_ratio": "optim.min_lr_ratio",
    "grad_clip": "optim.grad_clip",
    "max_nonfinite_steps": "optim.max_nonfinite_steps",
    "lock_image": "optim.lock_image",
    "lock_image_unlocked_groups": "optim.lock_image_unlocked_groups",
    "loss": "loss.kind",
    "label_smoothing": "loss.label_smoothing",
    "checkpoint_every": "checkpoint.every",
    "keep_last": "checkpoint.keep_last",
}


@accepts_aliases(FLAT_KEYS)
@dataclass
class TrainConfig:
    """Everything a contrastive training run needs.

    Attributes:
        model: A preset name (random init) or a checkpoint directory to start from.
        seed: Initial weights, data order and augmentation draws.
        device: "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
        precision: "fp32", "bf16" (autocast, CPU or CUDA) or "fp16" (CUDA, with a grad scaler).
        gradient_checkpointing: Recompute activations per layer in the backward pass: true
            (every part), false, or parts ("language", "vision", "language,vision";
            `vlkit.training.memory`).
        quantize_base: "4bit": frozen linear layers as bitsandbytes NF4 (QLoRA; CUDA only).
        strategy: Data parallelism over torchrun's processes: "ddp" (full replicas, gradients
            averaged by the trainer) or "fsdp" (FSDP2: parameters, gradients and optimizer
            state sharded per layer, sharded checkpoints; `vlkit.training.fsdp`).
        out_dir: Run directory (config, metrics, TensorBoard logs, curves, checkpoints).
        progress: Show a progress bar.
        log_every: Log metrics every N steps.
        data: The data source (`DataConfig`).
        optim: Batch, schedule and optimizer (`OptimConfig`).
        loss: The contrastive loss (`LossConfig`).
        checkpoint: Checkpoint frequency and retention (`CheckpointConfig`).
        eval: Periodic evaluation on held-out data (`EvalConfig`; off by default).

    The constructor also takes the flat keys of `FLAT_KEYS` (`batch_size=8` sets
    `optim.batch_size`; `data="shapes"` sets `data.source`), as config files and old runs use.
    """

    model: str = "small-64"
    seed: int = 0
    device: str = "auto"
    precision: Precision = "fp32"
    gradient_checkpointing: bool | str = False
    quantize_base: Literal["none", "4bit"] = "none"
    strategy: Literal["ddp", "fsdp"] = "ddp"
    out_dir: str = "runs/train"
    progress: bool = True
    log_every: int = 10
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        check_fields(self)
        check_range("log_every", self.log_every, 1)
        checkpoint_parts(self.gradient_checkpointing)
        # fp16's GradScaler cannot unscale FSDP's DTensor gradients; bf16 needs no scaler.
        if self.strategy == "fsdp" and self.precision == "fp16":
            raise ConfigError("strategy: fsdp supports precision fp32 or bf16, not fp16")
        if not self.out_dir.strip():  # Path("") is the current directory: never meant
            raise ConfigError("out_dir: empty; name the run directory ('.' for the current one)")
        if self.optim.batch_size < 2:
            raise ConfigError("optim.batch_size: contrastive training needs a batch of >= 2")
        if self.loss.kind == "memory_bank" and self.optim.micro_batch_size is not None:
            raise ConfigError(
                "optim.micro_batch_size: loss.kind=memory_bank trains whole batches (the queue "
                "already supplies the negatives); leave it unset"
            )
        if self.loss.kind == "memory_bank" and self.strategy == "fsdp":
            raise ConfigError("strategy: loss.kind=memory_bank trains on one process, not fsdp")
        every = self.eval.every
        if every is not None and self.data.source not in EVAL_SOURCES:
            raise ConfigError(
                f"eval.every: data.source={self.data.source} has no held-out split "
                f"(eval.every works with data.source {' or '.join(EVAL_SOURCES)})"
            )
        if every is not None and every % max(1, self.log_every):
            raise ConfigError(
                f"eval.every: must be a multiple of log_every={self.log_every} so that every "
                f"evaluation is logged, got {every}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The nested settings as JSON-ready values."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Nested (`{"optim": {"lr": ...}}`), dotted or old flat (`{"lr": ...}`) settings."""
        return from_dict(cls, values, FLAT_KEYS)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        """Reads `to_json` output, including a flat train_config.json of an older run."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    save = to_json  # the name earlier versions wrote runs with


__all__ = [
    "CHECKPOINT_PARTS",
    "FLAT_KEYS",
    "CheckpointConfig",
    "DataConfig",
    "EVAL_SOURCES",
    "EvalConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "checkpoint_parts",
]
