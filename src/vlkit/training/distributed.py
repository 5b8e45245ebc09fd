"""torch.distributed set-up for `torchrun` (env:// rendezvous) and feature gathering."""

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


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' `tensor` concatenated along dim 0; gradients flow back to their owners."""
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(tensor), dim=0)
