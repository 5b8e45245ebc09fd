"""Training losses: CLIP's InfoNCE, SigLIP's pairwise sigmoid, memory-bank InfoNCE."""

from vlkit.losses.contrastive import ClipLoss, clip_loss
from vlkit.losses.memory_bank import MemoryBankInfoNCE, MomentumEncoder
from vlkit.losses.sigmoid import SigLipLoss, sigmoid_loss

__all__ = [
    "ClipLoss",
    "MemoryBankInfoNCE",
    "MomentumEncoder",
    "SigLipLoss",
    "clip_loss",
    "sigmoid_loss",
]
