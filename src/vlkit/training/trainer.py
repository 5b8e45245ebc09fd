"""The one training loop. Tasks turn a batch into losses; callbacks log and checkpoint.

    trainer = Trainer(config, model, task, dataset, collate, callbacks=[...])
    summary = trainer.fit(resume="latest")

A step: batch -> task (forward + backward, possibly GradCache) -> non-finite guard -> gradient
all-reduce across processes -> unscale + clip -> AdamW step -> schedule -> temperature clamp.
The data position (epoch, batch within it) is part of the checkpoint, so `fit(resume=...)`
continues mid-epoch and reproduces an uninterrupted run bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from vlkit.distributed import DistributedInfo, resolve_device
from vlkit.hub import CheckpointError
from vlkit.hub.weights import load_into
from vlkit.training.checkpoint import (
    capture_rng_state,
    checkpoint_run_id,
    load_checkpoint,
    load_task_state,
    resolve_resume,
    restore_rng_state,
    save_checkpoint,
)
from vlkit.training.config import TrainConfig
from vlkit.training.data import MapStyleData, TrainingData
from vlkit.training.fsdp import is_sharded, shard_model
from vlkit.training.memory import apply_memory_options
from vlkit.training.optim import create_optimizer
from vlkit.training.schedule import create_scheduler
from vlkit.training.sharded_checkpoint import (
    is_sharded_checkpoint,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)

log = logging.getLogger(__name__)


def _batch_rows(batch: dict[str, Any]) -> int:
    """Rows of this process's batch: `images` rows, or `input_ids` rows for text-first
    batches (SFT) that have no `images` key."""
    return (batch["images"] if "images" in batch else batch["input_ids"]).shape[0]


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps produced a non-finite loss or gradient."""


class Task(Protocol):
    """Turns a batch into named losses; runs the backward pass itself (through `backward`) so
    that tasks such as GradCache accumulation can back-propagate in pieces.

    Optional, called when a task defines them: `on_optimizer_step(model)` after each optimizer
    step, and `state_dict()` / `load_state_dict(state)` (tensors saved with every checkpoint as
    task_state.safetensors and restored on resume), as `MemoryBankTask` does."""

    def training_step(
        self,
        model: torch.nn.Module,
        batch: dict[str, Any],
        backward: Callable[[torch.Tensor], None],
    ) -> dict[str, torch.Tensor]: ...


class Callback:
    """Hooks called by the trainer on the main process; override what you need.

    Subclassing is optional: the trainer calls only the hooks an object defines, so any object
    with, say, just `on_step_end` works as a callback.
    """

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None: ...


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        model: torch.nn.Module,
        task: Task,
        data: Dataset | TrainingData,
        collate: Callable | None = None,
        callbacks: Sequence[Callback] = (),
        distributed: DistributedInfo | None = None,
        checkpoint_dir: str | None = None,
    ) -> None:
        self.config = config
        self.distributed = distributed or DistributedInfo()
        self.device = resolve_device(config.device)
        if self.distributed.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.distributed.local_rank)
        if config.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 needs CUDA (use bf16 on CPU)")
        # Under FSDP each layer's shard moves to the device as it is sharded: the whole model
        # never sits on one GPU.
        fsdp = config.strategy == "fsdp"
        self.model = model if fsdp else model.to(self.device)
        apply_memory_options(model, config, self.device)  # 4-bit base, gradient checkpointing
        if fsdp:  # before the optimizer: fully_shard replaces the parameters (training/fsdp.py)
            self.model = shard_model(model, self.device, mixed_precision=config.precision)
        self.task = task
        if not hasattr(data, "loader"):  # a map-style dataset: batch it with the resumable sampler
            data = MapStyleData(data, collate, config.optim.batch_size, config.seed,
                                config.data.num_workers,
                                self.distributed.rank, self.distributed.world_size,
                                pin_memory=self.device.type == "cuda")  # fmt: skip
        self.data = data
        self.callbacks = list(callbacks)
        self.checkpoint_dir = checkpoint_dir or f"{config.out_dir}/checkpoints"
        self.optimizer = create_optimizer(
            model, config.optim.lr, config.optim.weight_decay, config.optim.betas, config.optim.eps,
            kind=config.optim.optimizer,
        )  # fmt: skip
        self.scheduler = create_scheduler(
            self.optimizer, config.optim.warmup_steps, self.total_steps, config.optim.min_lr_ratio
        )
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
        # Position and counters (all saved in checkpoints).
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.samples_seen = 0
        self.skipped_samples = 0
        self.skipped_examples: list[str] = []
        self.nonfinite_steps = 0
        self.nonfinite_in_a_row = 0
        self.train_seconds = 0.0
        self.last_metrics: dict[str, float] = {}
        self._saved_step = -1
        # Recorded in every checkpoint; pruning deletes only this run's checkpoints. A resumed
        # run takes the id of the checkpoint it continues.
        self.run_id = uuid.uuid4().hex

    @property
    def total_steps(self) -> int:
        if self.config.optim.max_steps is not None:
            return self.config.optim.max_steps
        return sum(self.data.batches_in_epoch(epoch) for epoch in range(self.config.optim.epochs))

    # ----------------------------------------------------------------- state
    def training_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": capture_rng_state(),
            "position": {"step": self.step, "epoch": self.epoch, "batch": self.batch_in_epoch},
            "counters": {
                "samples_seen": self.samples_seen,
                "skipped_samples": self.skipped_samples,
                "nonfinite_steps": self.nonfinite_steps,
                "nonfinite_in_a_row": self.nonfinite_in_a_row,
                "train_seconds": self.train_seconds,
            },
        }

    def save(self) -> None:
        if self._saved_step == self.step:
            return
        self._saved_step = self.step
        if self.config.strategy == "fsdp":  # every rank writes its shards (sharded_checkpoint.py)
            save_sharded_checkpoint(self.checkpoint_dir, self.step, self.model, self.optimizer,
                                    self.training_state(), self.config.checkpoint.keep_last,
                                    self.run_id)  # fmt: skip
        elif self.distributed.is_main:
            task_state = self.task.state_dict() if hasattr(self.task, "state_dict") else None
            save_checkpoint(self.checkpoint_dir, self.step, self.model, self.training_state(),
                            self.config.checkpoint.keep_last, self.run_id,
                            task_state)  # fmt: skip
        if self.distributed.enabled:
            dist.barrier()

    def restore(self, resume: str) -> None:
        path = resolve_resume(self.checkpoint_dir, resume)
        if is_sharded_checkpoint(path):  # written by an FSDP run, on any number of processes
            state = load_sharded_checkpoint(path, self.model, self.optimizer)
        elif is_sharded(self.model):
            raise CheckpointError(f"{path} is a plain (ddp) checkpoint: resume it with strategy=ddp "
                                  "(an fsdp run resumes sharded checkpoints)")  # fmt: skip
        else:
            weights, state = load_checkpoint(path)
            load_into(self.model, {k: v.to(self.device) for k, v in weights.items()}, str(path))
            self.optimizer.load_state_dict(state["optimizer"])
            if hasattr(self.task, "load_state_dict"):  # e.g. the memory bank's queue + key encoder
                self.task.load_state_dict(load_task_state(path))
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        position, counters = state["position"], state["counters"]
        self.step, self.epoch, self.batch_in_epoch = (
            position["step"], position["epoch"], position["batch"]
        )  # fmt: skip
        self.samples_seen = counters["samples_seen"]
        self.skipped_samples = counters["skipped_samples"]
        self.nonfinite_steps = counters["nonfinite_steps"]
        self.nonfinite_in_a_row = counters["nonfinite_in_a_row"]
        self.train_seconds = counters["train_seconds"]
        self.run_id = checkpoint_run_id(path) or self.run_id
        if path.parent.resolve() == Path(self.checkpoint_dir).resolve():
            # This very checkpoint is on disk: don't write it again at once (re-saving a step
            # moves the old copy aside for a moment, while `latest` may name it).
            self._saved_step = self.step

    # ------------------------------------------------------------------ loop
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def _all_reduce_gradients(self) -> None:
        """Averages gradients over processes. Done by hand rather than by DDP's hooks because
        GradCache's replay calls the towers directly, outside `forward`, where DDP can't see it."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.distributed.world_size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def train_step(self, batch: dict[str, Any]) -> dict[str, float] | None:
        """One optimizer step; returns its metrics, or None when the step was skipped."""
        model, config = self.model, self.config
        model.train()
        batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                 for k, v in batch.items()}  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            losses = self.task.training_step(model, batch, self._backward)
        loss = losses["loss"].detach().float()
        if self.distributed.enabled and self.config.strategy != "fsdp":
            self._all_reduce_gradients()  # (FSDP reduce-scatters, averaged, in the backward)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in model.parameters() if p.grad is not None]
        max_norm = config.optim.grad_clip if config.optim.grad_clip else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm))
        if not finite and not (self.scaler and torch.isfinite(loss)):
            # fp16 overflow in the gradients alone is the grad scaler's business (it lowers the
            # scale and skips); a non-finite loss, or any non-finite value without a scaler, is ours.
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_steps += 1
            self.nonfinite_in_a_row += 1
            if self.nonfinite_in_a_row >= config.optim.max_nonfinite_steps:
                raise TrainingDiverged(
                    f"{self.nonfinite_in_a_row} consecutive steps with a non-finite loss or "
                    f"gradient (last at step {self.step}); lower the learning rate, enable "
                    "optim.grad_clip, or use bf16 instead of fp16"
                )
            return None
        self.nonfinite_in_a_row = 0
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        on_optimizer_step = getattr(self.task, "on_optimizer_step", None)
        if on_optimizer_step is not None:  # e.g. MoCo's momentum update of the key encoder
            on_optimizer_step(model)
        max_scale = getattr(getattr(model, "config", None), "max_logit_scale", None)
        # A fixed temperature (loss.learn_temperature=false: no grad) is never clamped.
        if max_scale is not None and model.logit_scale.requires_grad:
            with torch.no_grad():  # open_clip clamps to [0, ln 100] after each step
                model.logit_scale.clamp_(0, math.log(max_scale))
        metrics = {name: float(value.detach().float()) for name, value in losses.items()}
        metrics.update(
            grad_norm=float(grad_norm),
            lr=self.optimizer.param_groups[0]["lr"],
        )
        if hasattr(model, "temperature"):  # contrastive models: log the learned temperature
            metrics["temperature"] = float(model.temperature().detach())
        return metrics

    def fit(self, resume: str | None = None) -> dict[str, Any]:
        if resume:
            self.restore(resume)
            if self.step >= self.total_steps and self.distributed.is_main:
                # Otherwise `--resume latest optim.max_steps=3` on a run at step 6 ends with
                # exit 0 and the old summary, as if it had trained.
                limit = (
                    f"optim.max_steps={self.config.optim.max_steps}"
                    if self.config.optim.max_steps is not None
                    else f"optim.epochs={self.config.optim.epochs} ({self.total_steps} steps)"
                )
                log.warning("the resumed run is already at step %d >= %s: nothing trained "
                            "(raise it to train on)", self.step, limit)  # fmt: skip
        self._notify("on_train_start")
        started = time.perf_counter() - self.train_seconds
        stop = self.step >= self.total_steps
        while not stop:
            stop = self._train_epoch(started)
        self.save()
        summary = self.summary()
        self._notify("on_train_end", summary)
        return summary

    def _notify(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(self, *args)

    def _train_epoch(self, started: float) -> bool:
        """Trains from the current position to the end of the epoch; True when training is over."""
        batches = self.data.batches_in_epoch(self.epoch)
        if batches == 0:
            raise ValueError(
                f"epoch {self.epoch} has no complete batch of {self.config.optim.batch_size}"
            )
        for batch in self.data.loader(self.epoch, self.batch_in_epoch):
            rows = _batch_rows(batch)
            count = rows * self.distributed.world_size
            skipped = batch.get("skipped", [])
            self.skipped_samples += len(skipped)
            self.skipped_examples.extend(skipped[: max(0, 10 - len(self.skipped_examples))])
            tick = time.perf_counter()
            # A batch whose samples were (nearly) all unusable has no contrastive pairs: skip it
            # (tasks whose single rows are examples, such as SFTTask, set `min_rows = 1`).
            usable = rows >= getattr(self.task, "min_rows", 2)
            metrics = self.train_step(batch) if usable else None
            self.step += 1
            self.batch_in_epoch += 1
            self.samples_seen += count
            epoch_done = self.batch_in_epoch == batches
            if epoch_done:  # roll over before saving, so a checkpoint names the next batch
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            self.train_seconds = time.perf_counter() - started
            if metrics is not None:
                rate = count / max(time.perf_counter() - tick, 1e-9)
                metrics.update(step=self.step, epoch=self.epoch, samples_per_second=rate)
                self.last_metrics = metrics
            self._notify("on_step_end", metrics or {"step": self.step, "skipped_step": 1.0})
            if self.config.checkpoint.every and self.step % self.config.checkpoint.every == 0:
                self.save()
            out_of_time = (
                self.config.optim.max_seconds is not None
                and self.train_seconds >= self.config.optim.max_seconds
            )
            if self.step >= self.total_steps or out_of_time:
                return True
            if epoch_done:
                return False
        # The stream ended early (a shard shorter than its manifest said): next epoch.
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return False

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.step,
            "epochs_completed": self.epoch,
            "samples_seen": self.samples_seen,
            "train_seconds": round(self.train_seconds, 2),
            "final_loss": self.last_metrics.get("loss"),
            "temperature": self.last_metrics.get("temperature"),
            "skipped_samples": self.skipped_samples,
            "skipped_examples": self.skipped_examples,
            "nonfinite_steps": self.nonfinite_steps,
        }
