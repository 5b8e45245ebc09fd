"""Devices and torch.distributed set-up for `torchrun` (env:// rendezvous) and feature gathering."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistributedInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# The device types a user may ask for; anything else (a typo such as "gpu", or torch's internal
# "meta" / "lazy") is refused before a model is built.
DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(name: str | torch.device | None = "auto", what: str = "device") -> torch.device:
    """The torch device for a device name; "auto" (or None) picks CUDA when it is available.

    The one place that turns a `--device` / `device=` setting into a device and checks it (the
    trainer, the VLM recipes, `load_vlm`, the embedding, index and evaluation commands all call
    it), so a request this machine cannot serve is one error naming the setting instead of a
    CUDA traceback from deep inside the first `.to(device)`.

    Args:
        name: "auto", "cpu", "cuda", "cuda:N", "mps", or a torch.device.
        what: How the caller names the setting in messages ("--device", "device").

    Raises:
        ValueError: An unknown device, or one that is not available here (CUDA without a GPU
            or without a CUDA build of torch, a GPU index past the last one, mps off macOS).
    """
    if name is None or (isinstance(name, str) and name.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = name if isinstance(name, torch.device) else torch.device(name.strip().lower())
    except (RuntimeError, ValueError, TypeError, AttributeError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ValueError(f"{what} {name!r}: unknown device (use auto, {', '.join(DEVICE_TYPES)})")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            reason = (
                "this torch has no CUDA support"
                if torch.version.cuda is None
                else ("no CUDA GPU is visible")
            )
            raise ValueError(f"{what} {name!r}: {reason}; use {what} cpu (or auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"{what} {name!r}: this machine has {count} CUDA GPU(s), 0..{count - 1}"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{what} {name!r}: Apple's mps backend is not available here")
    return device


def init_distributed(device_type: str) -> DistributedInfo:
    """Joins the process group torchrun describes in the environment (no-op when absent).

    gloo on CPU, nccl on CUDA; each process takes the GPU of its LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistributedInfo()
    info = DistributedInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


class _AllGather(torch.autograd.Function):
    """all_gather whose backward hands every rank the summed gradient of its own slice.

    Each rank r computes a loss L_r from all gathered tensors; the owner of slice j needs
    sum_r dL_r/dx_j, so the backward all-reduces the gradients and keeps the own slice. Written
    here (a few lines) because `torch.distributed.nn.functional.all_gather` is deprecated.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> tuple[torch.Tensor, ...]:
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        grad = torch.stack(grads).contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank], None


def all_gather_with_grad(tensor: torch.Tensor, group=None) -> list[torch.Tensor]:
    """Every rank's `tensor` (in rank order); gradients flow back to their owners."""
    return list(_AllGather.apply(tensor, group))


def gather_with_grad(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """All ranks' `tensor` concatenated along dim 0; gradients flow back to their owners."""
    return torch.cat(all_gather_with_grad(tensor, group), dim=0)
