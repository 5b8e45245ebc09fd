"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023, "Sigmoid Loss for Language Image
Pre-Training", Algorithm 1).

Every (image, text) pair is an independent binary classification: label +1 on the diagonal,
-1 elsewhere; loss = -sum log sigmoid(label * (t * <x, y> + b)) / batch_size, with t = exp(t')
initialised to 10 and b to -10 (Sec. 3.1: the bias keeps the many negatives from dominating the
first steps). As open_clip's `SigLipLoss`, `logit_scale` is the multiplier t itself.

Across processes the negatives of other ranks' texts are added. Two exchanges are available:
"all_gather" gathers all texts (with autograd) and scores local images against them; "neighbour"
passes text blocks around the ring one hop at a time (Sec. 3.3), so only two blocks are resident.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vlkit.distributed import all_gather_with_grad
from vlkit.losses.pairwise import check_paired, pair_logits

__all__ = ["SigLipLoss", "sigmoid_loss"]


def _pair_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None,
    positives: bool,
) -> torch.Tensor:
    """-sum log sigmoid(label * logit) over a block; the diagonal is positive when `positives`."""
    logits = pair_logits(image_emb, text_emb, logit_scale, logit_bias)
    labels = -torch.ones_like(logits)
    if positives:
        labels = labels + 2 * torch.eye(*logits.shape, device=logits.device, dtype=logits.dtype)
    return -F.logsigmoid(labels * logits).sum()


def sigmoid_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Single-process SigLIP loss, normalised by the number of images as in the paper."""
    check_paired(image_emb, text_emb)
    return _pair_loss(image_emb, text_emb, logit_scale, logit_bias, True) / image_emb.shape[0]


class _NeighbourExchange(torch.autograd.Function):
    """Sends `tensor` to rank+1 and receives rank-1's; the backward sends gradients back."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return _ring_shift(tensor, group, step=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _ring_shift(grad.contiguous(), ctx.group, step=-1), None


def _ring_shift(tensor: torch.Tensor, group, step: int) -> torch.Tensor:
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    received = torch.empty_like(tensor)
    send_to = dist.get_global_rank(group, (rank + step) % world) if group else (rank + step) % world
    recv_from = (
        dist.get_global_rank(group, (rank - step) % world) if group else (rank - step) % world
    )
    ops = [dist.P2POp(dist.isend, tensor.contiguous(), send_to, group),
           dist.P2POp(dist.irecv, received, recv_from, group)]  # fmt: skip
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


class SigLipLoss(nn.Module):
    """SigLIP loss; with `distributed=True` every rank adds the negatives of all other ranks.

    Args:
        distributed: Use torch.distributed (the process group must be initialised).
        exchange: "neighbour" (ring exchange, Sec. 3.3) or "all_gather".
        group: Optional process group.
    """

    def __init__(self, distributed: bool = False, exchange: str = "neighbour", group=None) -> None:
        super().__init__()
        if exchange not in ("neighbour", "all_gather"):
            raise ValueError(f"exchange must be 'neighbour' or 'all_gather', got {exchange!r}")
        self.distributed = distributed
        self.exchange = exchange
        self.group = group

    def forward(
        self,
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        if not self.distributed or dist.get_world_size(self.group) == 1:
            return sigmoid_loss(image_emb, text_emb, logit_scale, logit_bias)
        batch = image_emb.shape[0]
        world = dist.get_world_size(self.group)
        loss = _pair_loss(image_emb, text_emb, logit_scale, logit_bias, True)
        if self.exchange == "all_gather":
            rank = dist.get_rank(self.group)
            texts = all_gather_with_grad(text_emb, self.group)
            others = [t for r, t in enumerate(texts) if r != rank]
            loss = loss + _pair_loss(image_emb, torch.cat(others), logit_scale, logit_bias, False)
        else:
            block = text_emb
            for _ in range(world - 1):
                block = _NeighbourExchange.apply(block, self.group)
                loss = loss + _pair_loss(image_emb, block, logit_scale, logit_bias, False)
        return loss / batch
