"""Training: one trainer for contrastive and generative models, with its config and helpers.

The entry points most code needs; the submodules hold the rest (`tasks`, `checkpoint`,
`sampler`, `freeze`, `optim`, `schedule`, `vlm_task`, `vlm_recipe`, `flops`, `lm_accumulation`,
`sft_task`).
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
)
from vlkit.training.config_files import load_train_config
from vlkit.training.lm_accumulation import accumulated_lm_backward
from vlkit.training.sft_task import SFTTask
from vlkit.training.trainer import Callback, Trainer, TrainingDiverged

__all__ = [
    "Callback",
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "EvaluatorCallback",
    "LossConfig",
    "OptimConfig",
    "SFTTask",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "accumulated_contrastive_backward",
    "accumulated_lm_backward",
    "load_train_config",
]
