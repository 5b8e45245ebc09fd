"""A small CLIP from scratch on easy-VQA captions (the `make demo` training run).

    vlkit train --config easy_vqa_clip out_dir=runs/easy_vqa

Reaches zero-shot top-1 1.000 on the 1,000 easy-VQA test images (24 colour x shape classes,
evaluated by `vlkit demo`) after 300 steps, about 105 s on one core of the 2-core CPU machine
(measured 2026-11-27).
"""

from vlkit.training.config import DataConfig, OptimConfig, TrainConfig

CONFIG = TrainConfig(
    model="small-rn-64",
    data=DataConfig(source="easy_vqa"),
    optim=OptimConfig(
        batch_size=64,
        max_steps=300,
        lr=1e-3,
        warmup_steps=30,
        min_lr_ratio=0.02,
        weight_decay=0.1,
    ),
)
