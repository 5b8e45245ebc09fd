"""The training run's configuration: one typed dataclass, written next to the checkpoints."""

from __future__ import annotations

import ast
import json
import runpy
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    """Everything a contrastive training run needs.

    Attributes:
        model: A preset name (random init) or a checkpoint directory to start from.
        data: "easy_vqa", "shapes" (synthetic scenes, `num_samples`), "folder"
            (`data_root` + `annotations` CSV/JSONL with `image_column` / `caption_column`) or
            "webdataset" (`shards`: a directory of .tar shards or a brace pattern, as written
            by `vlkit data shard`).
        loss: "clip" (InfoNCE) or "siglip" (pairwise sigmoid).
        batch_size: Global batch (all processes together).
        micro_batch_size: When set, exact GradCache accumulation in micro-batches of this size.
        max_steps: Stop after this many optimizer steps (else `epochs` full epochs).
        max_seconds: Also stop when training has run this long (the demo's time budget).
        precision: "fp32", "bf16" (autocast, CPU or CUDA) or "fp16" (CUDA, with a grad scaler).
        lock_image: LiT: freeze the image tower except its last `lock_image_unlocked_groups`.
        checkpoint_every: Save every N steps (0: only at the end); keep the newest `keep_last`.
        max_nonfinite_steps: Stop with an error after this many non-finite steps in a row.
    """

    model: str = "small-64"
    data: str = "easy_vqa"
    data_root: str | None = None
    annotations: str | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    shards: str | None = None
    shuffle_buffer: int = 1000
    num_samples: int = 4000
    loss: str = "clip"
    label_smoothing: float = 0.0
    batch_size: int = 128
    micro_batch_size: int | None = None
    epochs: int = 1
    max_steps: int | None = None
    max_seconds: float | None = None
    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    augment: bool = True
    seed: int = 0
    num_workers: int = 0
    checkpoint_every: int = 0
    keep_last: int = 2
    log_every: int = 10
    max_nonfinite_steps: int = 5
    device: str = "auto"
    out_dir: str = "runs/train"
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        checks = {
            "loss": (self.loss, ("clip", "siglip")),
            "precision": (self.precision, ("fp32", "bf16", "fp16")),
            "data": (self.data, ("easy_vqa", "shapes", "folder", "webdataset")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.batch_size < 2:
            raise ValueError("contrastive training needs batch_size >= 2")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _parse_value(text: str) -> Any:
    """`key=value` values: Python/JSON literals where they parse, else the string itself."""
    lowered = {"true": True, "false": False, "null": None, "none": None}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_train_config(source: str | None, overrides: list[str] | None = None) -> TrainConfig:
    """A TrainConfig from a JSON file, a Python file defining `CONFIG` (a dict or TrainConfig),
    a named config in vlkit/configs/, or defaults; then `key=value` overrides."""
    values: dict[str, Any] = {}
    if source:
        path = Path(source)
        if not path.is_file():
            builtin = Path(__file__).resolve().parents[1] / "configs" / f"{source}.py"
            if not builtin.is_file():
                raise ValueError(f"config {source!r}: no such file or built-in config")
            path = builtin
        if path.suffix == ".json":
            values = json.loads(path.read_text())
        else:
            loaded = runpy.run_path(str(path)).get("CONFIG")
            if loaded is None:
                raise ValueError(f"{path} defines no CONFIG")
            values = loaded.to_dict() if isinstance(loaded, TrainConfig) else dict(loaded)
    known = {f.name for f in fields(TrainConfig)}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        values[key.strip()] = _parse_value(raw.strip())
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown training config keys: {unknown}")
    return TrainConfig(**values)
