"""A small ViT CLIP on the synthetic compositional scenes, with exact accumulation.

    vlkit train --config shapes_vit_gradcache out_dir=runs/shapes

Shows a 256 batch trained in GradCache micro-batches of 64 and periodic checkpoints on generated data; a
check of the pipeline rather than a tuned recipe (no accuracy is claimed for it).
"""

from vlkit.training.config import CheckpointConfig, DataConfig, LossConfig, OptimConfig, TrainConfig

CONFIG = TrainConfig(
    model="small-64",
    data=DataConfig(source="shapes", num_samples=20000),
    loss=LossConfig(kind="clip"),
    optim=OptimConfig(
        batch_size=256,
        micro_batch_size=64,
        max_steps=500,
        lr=5e-4,
        warmup_steps=50,
    ),
    checkpoint=CheckpointConfig(every=100),
)
