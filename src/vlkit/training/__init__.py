"""Training: one trainer for contrastive and generative models, with its config and helpers.

The entry points most code needs; the submodules hold the rest (`tasks`, `checkpoint`,
`distributed`, `sampler`, `freeze`, `optim`, `schedule`, `vlm_task`).
"""

from vlkit.training.accumulation import accumulated_contrastive_backward
from vlkit.training.config import TrainConfig, load_train_config
from vlkit.training.run import train
from vlkit.training.trainer import Callback, Trainer, TrainingDiverged
from vlkit.training.vlm_recipe import VLMRecipe, evaluate_vlm, load_vlm_run, train_vlm

__all__ = [
    "Callback",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "VLMRecipe",
    "accumulated_contrastive_backward",
    "evaluate_vlm",
    "load_train_config",
    "load_vlm_run",
    "train",
    "train_vlm",
]
