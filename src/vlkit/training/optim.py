"""AdamW with the weight-decay exclusions CLIP training uses.

open_clip (training/main.py) and the CLIP paper decay only weight matrices: biases, norm gains,
embeddings/tokens, the temperature and the SigLIP bias are excluded, since decaying them pulls
them toward zero for no regularisation benefit (a zero gain or temperature is not "simpler").
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

# Parameter-name fragments that mark embeddings and learned tokens.
EMBEDDING_NAMES = ("embedding", "class_token", "probe", "positional_embedding")


def no_weight_decay(name: str, param: nn.Parameter, exclude_embeddings: bool = True) -> bool:
    """Whether `name` is excluded from weight decay."""
    if param.ndim < 2 or name in ("logit_scale", "logit_bias"):
        return True  # biases, norm weights, scalars
    return exclude_embeddings and any(part in name for part in EMBEDDING_NAMES)


def parameter_groups(
    model: nn.Module, weight_decay: float, exclude_embeddings: bool = True
) -> list[dict]:
    """Two AdamW groups: decayed weight matrices and everything excluded (trainable only)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if no_weight_decay(name, param, exclude_embeddings) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def create_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.2,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
    exclude_embeddings: bool = True,
    kind: str = "adamw",
) -> torch.optim.Optimizer:
    """AdamW with CLIP's defaults (Radford et al. 2021, Table 18: beta2 0.98, eps 1e-6, wd 0.2).

    `kind="adamw8bit"`: bitsandbytes' 8-bit AdamW over the same groups (`vlkit.training.memory`;
    CUDA only, refused with a one-line `ConfigError` otherwise).
    """
    groups = parameter_groups(model, weight_decay, exclude_embeddings)
    if kind == "adamw8bit":
        from vlkit.training.memory import adamw_8bit  # bitsandbytes is imported only for it

        return adamw_8bit(groups, lr, betas, eps)
    if kind != "adamw":
        raise ValueError(f"optim.optimizer: expected adamw or adamw8bit, got {kind!r}")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def trainable_parameters(params: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in params if p.requires_grad)
