"""Helpers shared by the contract tests of this folder (imported by module name: pytest puts
this folder on `sys.path`, as it does for every test folder without an `__init__.py`)."""

from __future__ import annotations

import torch
from torch import nn


def generator(seed: int) -> torch.Generator:
    """A CPU generator at `seed`: every random input of a check is reproducible."""
    return torch.Generator().manual_seed(seed)


def dead_parameters(model: nn.Module) -> set[str]:
    """Trainable parameters that received no gradient (None) or an all-zero one."""
    return {
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not bool(p.grad.abs().sum() > 0))
    }


def assert_finite_grads(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
