"""Tasks: how a batch becomes losses. The trainer stays the same for every task.

`ContrastiveTask` trains with the batch as negatives (CLIP's InfoNCE, its hard-negative variant,
SigLIP); `MemoryBankTask` adds MoCo's queue of past keys and momentum key encoder. A task may
also define `on_optimizer_step(model)` (called after each optimizer step) and
`state_dict()` / `load_state_dict(state)` (tensors saved with every checkpoint, so that a
resumed run continues exactly); `build_contrastive_task` makes the task of a `TrainConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vlkit.distributed import DistributedInfo
from vlkit.losses.contrastive import ClipLoss
from vlkit.losses.hard_negative import HardNegativeInfoNCE
from vlkit.losses.memory_bank import MemoryBankInfoNCE, MomentumEncoder
from vlkit.losses.sigmoid import SigLipLoss
from vlkit.overrides import ConfigError
from vlkit.training.accumulation import accumulated_contrastive_backward
from vlkit.training.config import LossConfig, TrainConfig

__all__ = [
    "ContrastiveTask",
    "MemoryBankTask",
    "build_contrastive_task",
    "mutual_information_lower_bound",
    "set_temperature",
]


def mutual_information_lower_bound(loss: float | torch.Tensor, candidates: int) -> float:
    """InfoNCE's bound I(X; Y) >= log N - L_N (van den Oord et al. 2018, Sec. 2.3, Eq. 6).

    Args:
        loss: The InfoNCE loss L_N (nats), each query scored against `candidates` = N
            candidates, one of them its positive.
        candidates: N; the bound can never exceed log N, however good the encoder.
    """
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    return math.log(candidates) - float(loss)


class ContrastiveTask:
    """Image-text contrastive learning with the batch as negatives.

    Args:
        loss_fn: Called as `loss_fn(image_emb, text_emb, logit_scale, logit_bias)`.
        micro_batch_size: When set and smaller than the batch, exact GradCache accumulation.
        infonce: The loss is InfoNCE (no label smoothing, no hard-negative weights): log
            `mi_lower_bound` = log N - loss, N the (global) batch.
    """

    def __init__(
        self, loss_fn: nn.Module, micro_batch_size: int | None = None, infonce: bool = False
    ) -> None:
        self.loss_fn = loss_fn
        self.micro_batch_size = micro_batch_size
        self.infonce = infonce

    def training_step(
        self,
        model: nn.Module,
        batch: dict[str, Any],
        backward: Callable[[torch.Tensor], None],
    ) -> dict[str, torch.Tensor]:
        images, texts = batch["images"], batch["texts"]
        loss_fn = _capped_temperature(self.loss_fn, model)
        if self.micro_batch_size and self.micro_batch_size < images.shape[0]:
            loss = accumulated_contrastive_backward(
                model, loss_fn, images, texts, self.micro_batch_size, backward_fn=backward
            )
        else:
            output = model(images, texts)
            loss = loss_fn(
                output.image_embeds, output.text_embeds, output.logit_scale, output.logit_bias
            )
            backward(loss)
            loss = loss.detach()
        losses = {"loss": loss}
        if self.infonce:
            candidates = images.shape[0] * _gathered_ranks(self.loss_fn)
            losses["mi_lower_bound"] = torch.tensor(
                mutual_information_lower_bound(loss, candidates)
            )
        return losses


class MemoryBankTask:
    """MoCo-style training (He et al. 2020, Algorithm 1) for image-text pairs.

    Queries come from the model (with gradient), keys from its momentum copy (no gradient);
    each image is scored against the batch's text keys plus the queued ones, and each text
    against the image keys. After the loss the batch's keys are enqueued (`MemoryBankInfoNCE`),
    after the optimizer step the copy moves towards the model (theta_k <- m theta_k +
    (1 - m) theta_q, MoCo Eq. 2). Both are part of `state_dict`, which the trainer saves with
    every checkpoint.

    Args:
        loss_fn: The queue and its loss.
        model: The model being trained; its momentum copy is made now.
        momentum: m in [0, 1); None: no key encoder (keys = the model's own embeddings).
        infonce: The loss is InfoNCE: log `mi_lower_bound` with N = batch + queued keys.
    """

    def __init__(
        self,
        loss_fn: MemoryBankInfoNCE,
        model: nn.Module,
        momentum: float | None = 0.995,
        infonce: bool = False,
    ) -> None:
        self.loss_fn = loss_fn
        self.key_encoder = None if momentum is None else MomentumEncoder(model, momentum)
        self.infonce = infonce

    def _to(self, device: torch.device) -> None:
        """Follows the model to its device (the trainer moves the model after the task exists)."""
        if self.loss_fn.image_queue.device != device:
            self.loss_fn.to(device)
            if self.key_encoder is not None:
                self.key_encoder.to(device)

    def training_step(
        self,
        model: nn.Module,
        batch: dict[str, Any],
        backward: Callable[[torch.Tensor], None],
    ) -> dict[str, torch.Tensor]:
        images, texts = batch["images"], batch["texts"]
        self._to(images.device)
        self.loss_fn.train()
        output = model(images, texts)
        keys = (None, None) if self.key_encoder is None else self.key_encoder(images, texts)
        candidates = images.shape[0] + int(self.loss_fn.filled)  # before this batch is queued
        loss = _capped_temperature(self.loss_fn, model)(
            output.image_embeds, output.text_embeds, output.logit_scale, output.logit_bias, *keys
        )
        backward(loss)
        loss = loss.detach()
        losses = {"loss": loss, "queued_keys": self.loss_fn.filled.detach().float()}
        if self.infonce:
            losses["mi_lower_bound"] = torch.tensor(
                mutual_information_lower_bound(loss, candidates)
            )
        return losses

    def on_optimizer_step(self, model: nn.Module) -> None:
        if self.key_encoder is not None:
            self.key_encoder.update(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The queue ("queue.*": keys, pointer, fill) and the key encoder ("key_encoder.*")."""
        state = {f"queue.{name}": value for name, value in self.loss_fn.state_dict().items()}
        if self.key_encoder is not None:
            for name, value in self.key_encoder.model.state_dict().items():
                state[f"key_encoder.{name}"] = value
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restores `state_dict` output (strict: every key, nothing more)."""
        parts: dict[str, dict[str, torch.Tensor]] = {"queue": {}, "key_encoder": {}}
        for name, value in state.items():
            part, _, key = name.partition(".")
            if part not in parts:
                raise KeyError(f"unexpected memory-bank state {name!r}")
            parts[part][key] = value
        self.loss_fn.load_state_dict(parts["queue"], strict=True)
        if self.key_encoder is not None:
            self.key_encoder.model.load_state_dict(parts["key_encoder"], strict=True)
        elif parts["key_encoder"]:
            raise KeyError("the state has key-encoder weights but this task has no key encoder")


def set_temperature(model: nn.Module, loss: LossConfig) -> None:
    """Applies `loss.temperature` (tau: logit_scale = ln(1 / tau)) and `loss.learn_temperature`
    (false: the parameter stops requiring grad, so the optimizer, which takes only parameters
    that do, never sees it, and the trainer's clamp leaves it alone)."""
    scale = getattr(model, "logit_scale", None)
    if not isinstance(scale, nn.Parameter):
        raise ConfigError("loss.temperature: the model has no logit_scale parameter to set")
    if loss.temperature is not None:
        with torch.no_grad():
            scale.fill_(math.log(1.0 / loss.temperature))
    if not loss.learn_temperature:  # (a learned one keeps its flag: LoRA may have frozen it)
        scale.requires_grad_(False)


def build_contrastive_task(
    config: TrainConfig, model: nn.Module, distributed: DistributedInfo | None = None
) -> ContrastiveTask | MemoryBankTask:
    """The task of `config.loss` for `model`, whose temperature it sets first (`set_temperature`).

    Raises:
        ConfigError: loss.kind=memory_bank across several processes (each would keep its own
            queue, and only the main process's would be saved).
    """
    loss = config.loss
    distributed = distributed or DistributedInfo()
    set_temperature(model, loss)
    infonce = loss.kind != "siglip" and not loss.hard_negative_beta and not loss.label_smoothing
    if loss.kind == "memory_bank":
        if distributed.enabled:
            raise ConfigError("loss.kind: memory_bank trains on one process (no torchrun)")
        bank = MemoryBankInfoNCE(model.config.embed_dim, loss.memory_bank_size,
                                 loss.label_smoothing, loss.hard_negative_beta)  # fmt: skip
        return MemoryBankTask(bank, model, loss.momentum, infonce)
    if loss.kind == "siglip":
        loss_fn: nn.Module = SigLipLoss(distributed=distributed.enabled)
    elif loss.hard_negative_beta:
        loss_fn = HardNegativeInfoNCE(loss.hard_negative_beta, distributed=distributed.enabled)
    else:
        loss_fn = ClipLoss(label_smoothing=loss.label_smoothing, distributed=distributed.enabled)
    return ContrastiveTask(loss_fn, config.optim.micro_batch_size, infonce)


def _gathered_ranks(loss_fn: nn.Module) -> int:
    """How many processes' batches the loss scores against (its distributed gather)."""
    if getattr(loss_fn, "distributed", False) and dist.is_available() and dist.is_initialized():
        return dist.get_world_size(getattr(loss_fn, "group", None))
    return 1


def _capped_temperature(loss_fn: nn.Module, model: nn.Module) -> Callable[..., torch.Tensor]:
    """`loss_fn` with its temperature argument capped at the model's `max_logit_scale` (CLIP
    Sec. 2.5), while the temperature is learned.

    The trainer clamps the parameter to [0, ln max_scale] after each optimizer step (open_clip's
    training/train.py); the model's forward never clamps, so that loaded checkpoints give the
    reference logits. In float32, exp(ln 100) is 100.0000076: capping the multiplier here too keeps
    a clamped run's loss at exactly 100 x cosine, as vlkit's training always computed it. A fixed
    temperature (`loss.learn_temperature=false`) is the user's choice and is never capped.
    """
    max_scale = getattr(getattr(model, "config", None), "max_logit_scale", None)
    scale = getattr(model, "logit_scale", None)
    if max_scale is None or (isinstance(scale, torch.Tensor) and not scale.requires_grad):
        return loss_fn

    def capped(
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None,
        *keys: torch.Tensor | None,
    ) -> torch.Tensor:
        return loss_fn(image_emb, text_emb, logit_scale.clamp(max=max_scale), logit_bias, *keys)

    return capped
