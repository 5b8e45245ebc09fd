"""Training losses: CLIP's InfoNCE, SigLIP's pairwise sigmoid, memory-bank InfoNCE, BLIP-2's
stage-1 objectives, multi-modality contrastive losses (CoMM, K-modality InfoNCE) and the
next-token (causal LM) cross-entropy of the generative VLMs."""

from vlkit.losses.contrastive import ClipLoss, clip_loss
from vlkit.losses.hard_negative import (
    HardNegativeInfoNCE,
    hard_negative_cross_entropy,
    hard_negative_infonce,
)
from vlkit.losses.matching import (
    build_itm_batch,
    itg_loss,
    itm_loss,
    qformer_itc_loss,
    sample_hard_negatives,
)
from vlkit.losses.memory_bank import MemoryBankInfoNCE, MomentumEncoder
from vlkit.losses.multimodal import comm_loss, info_nce, multimodal_infonce
from vlkit.losses.next_token import IGNORE_INDEX, next_token_loss
from vlkit.losses.sigmoid import SigLipLoss, sigmoid_loss

__all__ = [
    "IGNORE_INDEX",
    "ClipLoss",
    "HardNegativeInfoNCE",
    "MemoryBankInfoNCE",
    "MomentumEncoder",
    "SigLipLoss",
    "build_itm_batch",
    "clip_loss",
    "comm_loss",
    "hard_negative_cross_entropy",
    "hard_negative_infonce",
    "info_nce",
    "itg_loss",
    "itm_loss",
    "multimodal_infonce",
    "next_token_loss",
    "qformer_itc_loss",
    "sample_hard_negatives",
    "sigmoid_loss",
]
