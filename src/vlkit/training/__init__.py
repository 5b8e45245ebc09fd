"""Training: one trainer for contrastive and generative models, with its config and helpers.

The entry points most code needs; the submodules hold the rest (`tasks`, `checkpoint`,
`sampler`, `freeze`, `optim`, `schedule`, `vlm_task`, `vlm_recipe`, `flops`).
"""

from vlkit.training.accumulation import accumulated_contrastive_backward
from vlkit.training.callbacks import EvaluatorCallback
from vlkit.training.config import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LossConfig,
    OptimConfig,
    TrainConfig,
    load_train_config,
)
from vlkit.training.trainer import Callback, Trainer, TrainingDiverged

__all__ = [
    "Callback",
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "EvaluatorCallback",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "accumulated_contrastive_backward",
    "load_train_config",
]
