"""The sections of a `TrainConfig` (`vlkit.training.config`): one dataclass per group of keys.

    TrainConfig(data=DataConfig(source="shapes"), optim=OptimConfig(lr=1e-3))
    vlkit train data.source=shapes optim.lr=1e-3 loss.label_smoothing=0.1 checkpoint.every=100

`DataConfig` (the data source and how it is read), `OptimConfig` (batch, schedule, AdamW, what
trains), `LossConfig`, `CheckpointConfig` and `EvalConfig` (periodic evaluation on held-out data).
Each checks its own keys when built and names the dotted key in its `ConfigError`; the checks
that span sections (a memory bank with micro-batches, `eval.every` on a source without a held-out
split) are `TrainConfig.__post_init__`'s. `vlkit.training.config` re-exports every name here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlkit.overrides import ConfigError, check_fields, check_range

DataSource = Literal["easy_vqa", "shapes", "folder", "webdataset"]


@dataclass
class DataConfig:
    """Where the image-caption pairs come from.

    Attributes:
        source: "easy_vqa", "shapes" (synthetic scenes, `num_samples` of them), "folder" (`root`
            + `annotations` CSV/JSONL with `image_column` / `caption_column`) or "webdataset"
            (`shards`: a directory of .tar shards or a brace pattern, as written by
            `vlkit data shard`, shuffled through a `shuffle_buffer`).
        augment: Random training augmentation of the images.
        num_workers: DataLoader worker processes.
        balance_by: Draw every value of this metadata column equally often (a column of the
            folder source's annotation file; easy_vqa: class, color or shape), with
            inverse-frequency weights saved in the run's balance.json
            (`vlkit.training.balanced_data`); None: plain shuffling.
    """

    source: DataSource = "easy_vqa"
    root: str | None = None
    annotations: str | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    shards: str | None = None
    shuffle_buffer: int = 1000
    num_samples: int = 4000
    augment: bool = True
    num_workers: int = 0
    balance_by: str | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        if self.balance_by is not None and self.source not in ("folder", "easy_vqa"):
            raise ConfigError(
                f"data.balance_by: data.source={self.source} has no metadata columns "
                "(balance data.source=folder or easy_vqa)"
            )
        check_range("data.shuffle_buffer", self.shuffle_buffer, 1)
        check_range("data.num_samples", self.num_samples, 1)
        check_range("data.num_workers", self.num_workers, 0)


@dataclass
class OptimConfig:
    """How the weights are optimised: batch, length, AdamW, warm-up + cosine, what is trained.

    Attributes:
        batch_size: Global batch (all processes together).
        micro_batch_size: When set, exact accumulation in micro-batches of this size (GradCache
            for contrastive tasks, token-weighted sums for `SFTTask`).
        accumulation_steps: Micro-batches per optimizer step, all processes together:
            `batch_size = micro_batch_size * accumulation_steps` (give any two of the three;
            the micro-batch size is derived from the other two when unset).
        epochs: Full epochs to train when `max_steps` is None.
        max_steps: Stop after this many optimizer steps (else `epochs` full epochs).
        max_seconds: Also stop when training has run this long (the demo's time budget).
        lr, weight_decay, betas, eps: AdamW (decay only on weight matrices).
        warmup_steps, min_lr_ratio: Linear warm-up, then cosine decay to `lr * min_lr_ratio`.
        grad_clip: Max global gradient norm, or None.
        max_nonfinite_steps: Stop with an error after this many non-finite steps in a row.
        lock_image: LiT: freeze the image tower except its last `lock_image_unlocked_groups`.
        optimizer: "adamw" (torch) or "adamw8bit" (bitsandbytes' 8-bit AdamW; CUDA only).
    """

    batch_size: int = 128
    micro_batch_size: int | None = None
    accumulation_steps: int | None = None
    epochs: int = 1
    max_steps: int | None = None
    max_seconds: float | None = None
    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    max_nonfinite_steps: int = 5
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"

    def __post_init__(self) -> None:
        check_fields(self)
        # A zero or negative length "trains" nothing and writes step_00000000; a zero
        # micro-batch silently turned accumulation off (issue 18): all refused here.
        check_range("optim.batch_size", self.batch_size, 1)
        check_range("optim.micro_batch_size", self.micro_batch_size, 1)
        check_range("optim.accumulation_steps", self.accumulation_steps, 1)
        self._derive_micro_batch()
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise ConfigError(
                f"optim.micro_batch_size: must be at most optim.batch_size={self.batch_size} "
                f"(it splits each batch for GradCache; none: no splitting), "
                f"got {self.micro_batch_size}"
            )
        check_range("optim.epochs", self.epochs, 1)
        check_range("optim.max_steps", self.max_steps, 1)
        check_range("optim.max_seconds", self.max_seconds, 0, low_open=True)
        check_range("optim.lr", self.lr, 0, low_open=True)
        check_range("optim.weight_decay", self.weight_decay, 0)
        for i, beta in enumerate(self.betas):
            check_range(f"optim.betas[{i}]", beta, 0, 1, high_open=True)
        check_range("optim.eps", self.eps, 0, low_open=True)
        check_range("optim.warmup_steps", self.warmup_steps, 0)
        check_range("optim.min_lr_ratio", self.min_lr_ratio, 0, 1)
        check_range("optim.grad_clip", self.grad_clip, 0, low_open=True)
        check_range("optim.max_nonfinite_steps", self.max_nonfinite_steps, 1)
        check_range("optim.lock_image_unlocked_groups", self.lock_image_unlocked_groups, 0)

    def _derive_micro_batch(self) -> None:
        """batch_size = micro_batch_size * accumulation_steps; an inconsistent trio is refused."""
        steps, micro = self.accumulation_steps, self.micro_batch_size
        if steps is None:
            return
        if micro is None:
            if self.batch_size % steps:
                raise ConfigError(
                    f"optim.accumulation_steps: optim.batch_size={self.batch_size} is not "
                    f"divisible by optim.accumulation_steps={steps} (set optim.micro_batch_size "
                    "or a batch size that is a multiple)"
                )
            self.micro_batch_size = self.batch_size // steps
        elif micro * steps != self.batch_size:
            raise ConfigError(
                f"optim.accumulation_steps: optim.micro_batch_size={micro} x "
                f"optim.accumulation_steps={steps} = {micro * steps} must equal "
                f"optim.batch_size={self.batch_size} (set optim.batch_size={micro * steps}, "
                "or leave optim.micro_batch_size unset)"
            )


@dataclass
class LossConfig:
    """The contrastive loss and its temperature (docs/contrastive.md).

    Attributes:
        kind: "clip" (InfoNCE over the batch), "siglip" (pairwise sigmoid; needs a model with a
            logit bias) or "memory_bank" (MoCo, He et al. 2020: InfoNCE over the batch plus a
            FIFO queue of the last `memory_bank_size` keys, embedded by a momentum copy of the
            model; queue and copy are saved with each checkpoint). Single process, no
            micro-batches.
        label_smoothing: For the "clip" and "memory_bank" losses.
        learn_temperature: Train the temperature tau (CLIP); false: keep it fixed (at
            `temperature` when set, else the model's), out of the optimizer and never clamped.
        temperature: Start from this tau (> 0; the logits are cos / tau, CLIP starts at 0.07);
            None: the model's own.
        hard_negative_beta: Weight the negatives by their hardness (Robinson et al. 2021,
            `vlkit.losses.hard_negative`; >= 0, 0: plain InfoNCE); "clip" and "memory_bank".
        memory_bank_size: Past keys queued per modality ("memory_bank"; >= 1).
        momentum: The key encoder's EMA momentum m in [0, 1) (MoCo Eq. 2; "memory_bank");
            None: no key encoder, the queue holds the model's own (detached) embeddings.

    Every InfoNCE run (clip or memory_bank, beta = 0, no label smoothing) logs
    `mi_lower_bound` = log N - loss each step (van den Oord et al. 2018, Sec. 2.3), N being the
    candidates each query is scored against.
    """

    kind: Literal["clip", "siglip", "memory_bank"] = "clip"
    label_smoothing: float = 0.0
    learn_temperature: bool = True
    temperature: float | None = None
    hard_negative_beta: float = 0.0
    memory_bank_size: int = 4096
    momentum: float | None = 0.995

    def __post_init__(self) -> None:
        check_fields(self)
        check_range("loss.label_smoothing", self.label_smoothing, 0, 1, high_open=True)
        check_range("loss.temperature", self.temperature, 0, low_open=True)
        check_range("loss.hard_negative_beta", self.hard_negative_beta, 0)
        check_range("loss.memory_bank_size", self.memory_bank_size, 1)
        check_range("loss.momentum", self.momentum, 0, 1, high_open=True)
        if self.hard_negative_beta and self.kind == "siglip":
            raise ConfigError(
                "loss.hard_negative_beta: weights InfoNCE's negatives (loss.kind clip or "
                "memory_bank), not siglip's"
            )
        if self.hard_negative_beta and self.label_smoothing:
            raise ConfigError(
                "loss.hard_negative_beta: cannot be combined with loss.label_smoothing "
                f"(got {self.label_smoothing}); set one of them to 0"
            )


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many stay.

    Attributes:
        every: Save every N steps (0: only at the end).
        keep_last: Keep the newest N checkpoints (0: all of them).
    """

    every: int = 0
    keep_last: int = 2

    def __post_init__(self) -> None:
        check_fields(self)
        check_range("checkpoint.every", self.every, 0)
        check_range("checkpoint.keep_last", self.keep_last, 0)


# The data sources with a held-out split that `eval.every` evaluates on (recipes/clip_run.py).
EVAL_SOURCES: tuple[str, ...] = ("easy_vqa", "shapes")


@dataclass
class EvalConfig:
    """Periodic evaluation on held-out data while training (off by default).

    easy_vqa: zero-shot classification over its 24 classes on the test split; shapes:
    image <-> text retrieval between test scenes and their captions. The metrics join the step's
    row of metrics.jsonl as "eval/<name>/<metric>", and the final ones the run summary.

    Attributes:
        every: Evaluate every N steps (a multiple of `log_every`, so each evaluation is
            logged) and at the end; None: never.
        limit: Evaluate on the first N held-out examples; None: the whole held-out split
            (easy-VQA's 1,000 test images; 1,000 test scenes for shapes).
        batch_size: Images per forward pass.
    """

    every: int | None = None
    limit: int | None = None
    batch_size: int = 256

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("every", "limit", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"eval.{name}: must be >= 1, got {value}")


__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "DataSource",
    "EVAL_SOURCES",
    "EvalConfig",
    "LossConfig",
    "OptimConfig",
]
