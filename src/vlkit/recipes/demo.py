"""`vlkit demo`: train a small CLIP from scratch on easy-VQA captions on a CPU, then evaluate it.

The pipeline, end to end in about 70 s on a two-core CPU machine:

1. Data. easy-VQA's 4,000 train and 1,000 test 64x64 images, each labelled (colour, shape) from
   its questions (`vlkit.data.datasets.easy_vqa`). Each training sample gets one of the
   `CAPTION_TEMPLATES` phrasings of its class and CLIP's random-resized-crop (scale 0.9-1),
   both drawn from the sample's seed.
2. Training, with vlkit's one trainer (`vlkit.training.Trainer`, the same loop as `vlkit train`):
   CLIP's symmetric InfoNCE (`vlkit.losses.ClipLoss`), AdamW with linear warm-up and cosine
   decay, no weight decay on norms, biases, embeddings and the temperature (as open_clip), the
   learned log-temperature clamped to ln(100) after each step (CLIP Sec. 2.5). The trainer's
   checkpoint and metrics.jsonl go to `out_dir/train/`.
3. Evaluation on the 1,000 test images:
   - zero-shot classification over the 24 "<colour> <shape>" classes: each class's weight is
     the mean of its L2-normalised embeddings over the prompt templates, re-normalised
     (CLIP Sec. 3.1.4); top-1 accuracy and mean per-class recall. The prompts are the caption
     phrasings seen in training: no test image or test label is used to build them.
   - retrieval R@1 between the test images and their canonical captions "a <colour> <shape>".
     Many images share a caption (1,000 images, 24 distinct captions), so a retrieved caption
     (image -> text) or image (text -> image) counts as a hit when it has the query's class;
     image -> text R@1 therefore equals zero-shot top-1 with the single template "a {}", and
     text -> image R@1 is the fraction of the 1,000 captions whose nearest image has their
     class.

Model: the `small-rn-64` preset, a CLIP with a small ModifiedResNet image tower (8.1 M
parameters, 6.3 M of them the text token embedding). Colours are learned within a few dozen
steps; shapes are what takes time, and a convolutional tower learns them far faster than a
ViT from scratch. Measured here: a ViT of similar cost per step (64 px, patch 8, width 128,
3 layers) reached 72% zero-shot top-1 after 1,000 steps of 24, while this preset is past 98%
after 250 steps of 64 (1.000 after the default 300 on the test split, measured 2026-11-27).

Determinism: the run is a fixed number of optimizer steps, with every random draw (init,
shuffling, phrasings, crops) from `seed`; given the seed and the thread count, two runs give
the same numbers (the thread count changes float summation order, hence the last digits).
`seconds_budget` is a guard for slow or busy machines only: training stops when it is spent
(the trainer's `max_seconds`); the summary then says so (`stopped_early`), and the run is no
longer reproducible.

Threads: by default half the cores this process may use (one on a two-core machine). Measured
on two cores: with the machine to itself, two threads take 0.11 s per step and one 0.19 s; with
one other busy process, one thread still takes 0.2 s while two take 1.5 s, because OpenMP's
threads wait on each other whenever one is descheduled. The safe choice costs about 30 s when
the machine is idle and saves minutes when it is not.

Outputs in `out_dir`: summary.json, report.md, model/ (`save_pretrained`), history.json
(per-step loss, temperature, learning rate) and, when matplotlib is installed,
training_curves.png and similarity.png.

Each run writes `out_dir` afresh: running the demo again (`make demo` twice) replaces the
previous demo's results and deletes its training run (`out_dir/train/`: checkpoints and
metrics, so that none of them mixes into the new one), and says so on stderr. The demo is a
fixed recipe whose results it regenerates; runs worth keeping go through `vlkit train`, which
refuses to write over a run without `--overwrite`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from vlkit.data.collate import collate_image_text
from vlkit.data.datasets.easy_vqa import (
    CAPTION_TEMPLATES,
    CLASS_NAMES,
    EasyVQACaptions,
    EasyVQAExample,
    load_easy_vqa,
)
from vlkit.data.images import load_image
from vlkit.data.tokenizers import get_tokenizer
from vlkit.data.transforms import ImageTransform, get_transform
from vlkit.losses import ClipLoss
from vlkit.models.clip import CLIP, create_model
from vlkit.overrides import ConfigError, accepts_aliases, check_fields
from vlkit.recipes.demo_evaluation import EasyVQAEvaluator
from vlkit.recipes.demo_report import (
    plot_examples,
    plot_modality_gap,
    plot_training,
    report_markdown,
)
from vlkit.training.callbacks import JsonlLogger, ProgressBar
from vlkit.training.config import (
    FLAT_KEYS,
    CheckpointConfig,
    DataConfig,
    LossConfig,
    OptimConfig,
    TrainConfig,
)
from vlkit.training.run_directory import TRAIN_RUN_FILES, prepare_run_directory
from vlkit.training.tasks import ContrastiveTask
from vlkit.training.trainer import Callback, Trainer

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_PRESET", "DEFAULT_SECONDS", "DEMO_FLAT_KEYS", "DemoConfig", "run_demo"]

DEFAULT_PRESET = "small-rn-64"
# The training time budget. The default 300 steps take 60-80 s on one thread of the two-core
# reference machine, so the whole `make demo` (data, training, evaluation, saving) stays well
# within three minutes, with room for a busy machine before the budget shortens the schedule.
DEFAULT_SECONDS = 150.0

SUMMARY_KEYS = (
    "zero_shot_top1",
    "zero_shot_mean_per_class_recall",
    "retrieval_i2t_r1",
    "retrieval_t2i_r1",
    "train_seconds",
    "steps",
    "final_loss",
    "final_temperature",
)


def _demo_optim() -> OptimConfig:
    """The demo's tuned optimisation: 300 steps of 64 pairs within `DEFAULT_SECONDS`, AdamW
    (beta2 = 0.98 as CLIP, for stability) with decay on weight matrices only, 30 warm-up steps
    then cosine to 2% of the peak learning rate."""
    return OptimConfig(batch_size=64, max_steps=300, max_seconds=DEFAULT_SECONDS, lr=1e-3,
                       min_lr_ratio=0.02, warmup_steps=30, weight_decay=0.1)  # fmt: skip


# The keywords of earlier versions (`run_demo(steps=20, seconds_budget=60, batch_size=32)`) ->
# where they live now: the demo's two names, and the flat keys of the groups it shares with
# every training run (`FLAT_KEYS`).
DEMO_FLAT_KEYS: dict[str, str] = {
    "steps": "optim.max_steps",
    "seconds_budget": "optim.max_seconds",
    **{k: v for k, v in FLAT_KEYS.items() if v.partition(".")[0] in ("optim", "loss", "data")},
}


@accepts_aliases(DEMO_FLAT_KEYS)
@dataclass
class DemoConfig:
    """Hyperparameters of the demo run (the defaults are the tuned ones).

    The flat keywords of earlier versions still work (`DemoConfig(steps=20, batch_size=32)`:
    `DEMO_FLAT_KEYS`).

    Attributes:
        preset: `vlkit.PRESETS` entry of the model to train.
        seed: Seed for initialisation and every random draw.
        optim: The training run's `OptimConfig`: `max_steps` is the schedule's length (the
            demo's `steps`), `max_seconds` the time guard (`seconds_budget`: training fits its
            schedule into, and stops after, this many seconds).
        loss: The CLIP loss's `label_smoothing` (`LossConfig`; the demo trains CLIP's InfoNCE).
        data: `augment` (random resized crops of the training images) and `num_workers`
            (`DataConfig`; the images are easy-VQA's).
        train_limit: Use only the first N train images (tests), or None for all 4,000.
        test_limit: Evaluate on the first N test images, or None for all 1,000.
        threads: torch intra-op threads; None uses half the cores this process may run on
            (see the module docstring).
        eval_batch_size: Images per forward pass in evaluation.
        templates: Caption phrasings (training) and prompt templates (zero-shot).
        plots: Write PNG plots when matplotlib is importable.
        progress: Show a tqdm progress bar.
    """

    preset: str = DEFAULT_PRESET
    seed: int = 0
    optim: OptimConfig = field(default_factory=_demo_optim)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train_limit: int | None = None
    test_limit: int | None = None
    threads: int | None = None
    eval_batch_size: int = 250
    templates: tuple[str, ...] = field(default=CAPTION_TEMPLATES)
    plots: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        if self.optim.max_steps is None or self.optim.max_steps < 1:
            raise ConfigError("optim.max_steps (steps): the demo trains a fixed number >= 1")
        if self.optim.batch_size < 2 or self.optim.warmup_steps < 0:
            raise ConfigError("optim: the demo needs batch_size >= 2 and warmup_steps >= 0")
        if self.loss.kind != "clip" or self.data.source != "easy_vqa":
            raise ConfigError("the demo trains CLIP's loss (loss.kind=clip) on easy-VQA "
                              "(data.source=easy_vqa)")  # fmt: skip
        loss, default = self.loss, LossConfig()
        for key in ("learn_temperature", "temperature", "hard_negative_beta"):
            if getattr(loss, key) != getattr(default, key):  # `vlkit train` has these options
                raise ConfigError(f"loss.{key}: the demo trains CLIP's learned-temperature "
                                  "InfoNCE; use vlkit train for this option")  # fmt: skip


def run_demo(
    out_dir: str | os.PathLike[str] = "runs/demo",
    preset: str = DEFAULT_PRESET,
    seconds_budget: float = DEFAULT_SECONDS,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Trains a small CLIP on easy-VQA, evaluates it, and writes the results to `out_dir`.

    Args:
        out_dir: Output directory (created).
        preset: Model preset name.
        seconds_budget: Training time guard in seconds (see the module docstring).
        seed: Seed for everything random.
        **options: Any other `DemoConfig` field or `DEMO_FLAT_KEYS` key, e.g.
            `steps=20, train_limit=256` or `optim=OptimConfig(...)`.

    Returns:
        The summary also written to `out_dir/summary.json` (metrics in [0, 1], timings,
        steps, losses, final temperature, the configuration).
    """
    known = {f.name for f in fields(DemoConfig)} | set(DEMO_FLAT_KEYS)
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"run_demo got unknown options {unknown}; known: {sorted(known)}")
    config = DemoConfig(**options, preset=preset, seconds_budget=seconds_budget, seed=seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads or max(1, _available_cores() // 2))
    try:
        return _run(config, Path(out_dir))
    finally:
        torch.set_num_threads(previous_threads)


def _available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _run(config: DemoConfig, out_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    if (out_dir / "summary.json").exists() or (out_dir / "train").exists():
        log.warning("vlkit demo: replacing the previous demo run in %s", out_dir)
    prepare_run_directory(out_dir / "train", TRAIN_RUN_FILES, overwrite=True)
    torch.manual_seed(config.seed)
    model = create_model(config.preset)
    tokenizer = _tokenizer(model)

    train_examples = load_easy_vqa("train")[: config.train_limit]
    test_examples = load_easy_vqa("test")[: config.test_limit]
    test_images = _preload(test_examples, model)
    test_labels = torch.tensor([e.label for e in test_examples])
    data_seconds = time.perf_counter() - started
    # The modality gap of the untrained model (Liang et al. 2022: it exists at initialisation),
    # to set against the trained one's; evaluation uses no random draw, so the run is unchanged.
    evaluator = EasyVQAEvaluator(tokenizer, config.templates, config.eval_batch_size)
    gap_init, *init_embeddings = evaluator.modality_gap(model, (test_images, test_labels))

    history = _train(model, config, train_examples, out_dir)
    metrics = _evaluate(model, tokenizer, config, test_images, test_labels)

    tail = max(1, len(history["loss"]) // 20)
    summary: dict[str, Any] = {
        **{k: metrics[k] for k in metrics if k not in ("similarity", "examples", "embeddings")},
        "modality_gap_init": round(gap_init["modality_gap"], 4),
        "mean_paired_cosine_init": round(gap_init["mean_paired_cosine"], 4),
        "train_seconds": round(history["seconds"], 2),
        "steps": len(history["loss"]),
        "planned_steps": config.optim.max_steps,
        "stopped_early": len(history["loss"]) < config.optim.max_steps,
        # Per-step losses are noisy (random batches and phrasings): the reported values
        # average the first and last 5% of steps.
        "initial_loss": _mean(history["loss"][:tail]),
        "final_loss": _mean(history["loss"][-tail:]),
        "final_temperature": round(model.temperature().item(), 4),
        "final_logit_scale": round(model.logit_scale.item(), 4),
        "train_images": len(train_examples),
        "test_images": len(test_examples),
        "parameters": model.num_parameters(),
        "data_seconds": round(data_seconds, 2),
        "threads": torch.get_num_threads(),
        "seed": config.seed,
        "preset": config.preset,
        "config": {k: v for k, v in asdict(config).items() if k not in ("plots", "progress")},
        "platform": f"{platform.system()} {platform.machine()}, torch {torch.__version__}",
    }
    model.save_pretrained(out_dir / "model")
    (out_dir / "history.json").write_text(
        json.dumps({k: history[k] for k in ("loss", "temperature", "lr")}) + "\n"
    )
    examples = [{**e, "image": str(test_examples[e["index"]].path)} for e in metrics["examples"]]
    summary["zero_shot_examples"] = examples
    plots = plot_training(history, metrics["similarity"], out_dir) if config.plots else []
    if config.plots and plots:
        plots.append(plot_examples(examples, out_dir))
        plots.append(plot_modality_gap(init_embeddings, metrics["embeddings"], out_dir))
    summary["plots"] = plots
    summary["total_seconds"] = round(time.perf_counter() - started, 2)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "report.md").write_text(report_markdown(summary))
    return summary


def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / len(values), 4)


def _tokenizer(model: CLIP) -> Callable[[list[str]], torch.Tensor]:
    return get_tokenizer("clip", context_length=model.config.text.context_length)


def _preload(examples: Sequence[EasyVQAExample], model: CLIP) -> torch.Tensor:
    """All images, decoded and preprocessed (eval transform) into one (N, 3, S, S) tensor."""
    transform = get_transform(model.config.preprocess, train=False)
    return torch.stack([transform(load_image(e.path, keep_mode=True)) for e in examples])


class _History(Callback):
    """Keeps every step's loss, learning rate and temperature for the plots and the summary."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {"loss": [], "temperature": [], "lr": []}

    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if "loss" in metrics:
            for key in self.values:
                self.values[key].append(round(metrics[key], 6))


def _train(model: CLIP, config: DemoConfig, examples: Sequence[EasyVQAExample], out_dir: Path):
    """Trains with vlkit's one trainer (`vlkit.training.Trainer`), as `vlkit train` would."""
    tokenizer = _tokenizer(model)
    transform = ImageTransform(model.config.preprocess, train=config.data.augment)
    dataset = EasyVQACaptions("train", transform=transform, tokenizer=tokenizer, seed=config.seed,
                              templates=config.templates, examples=list(examples))  # fmt: skip
    train_config = TrainConfig(
        model=config.preset, seed=config.seed, data=config.data, optim=config.optim,
        loss=config.loss, checkpoint=CheckpointConfig(keep_last=1),
        out_dir=str(out_dir / "train"), progress=config.progress, log_every=1,
    )  # fmt: skip
    history = _History()
    callbacks: list[Callback] = [history, JsonlLogger(out_dir / "train" / "metrics.jsonl", 1)]
    if config.progress:
        callbacks.append(ProgressBar())
    task = ContrastiveTask(ClipLoss(label_smoothing=config.loss.label_smoothing))
    trainer = Trainer(train_config, model, task, dataset, collate_image_text, callbacks)
    summary = trainer.fit()
    model.eval()
    return {**history.values, "seconds": summary["train_seconds"]}


def _evaluate(
    model: CLIP,
    tokenizer: Callable[[list[str]], torch.Tensor],
    config: DemoConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> dict[str, Any]:
    """The test metrics (`EasyVQAEvaluator`), rounded, with the plots' similarity matrix, the
    zero-shot examples and the (image, caption) embeddings of the modality-gap plot."""
    evaluator = EasyVQAEvaluator(tokenizer, config.templates, config.eval_batch_size)
    predictions = evaluator.predict(model, (images, labels))
    metrics = evaluator.score(predictions)
    outputs = predictions.zero_shot
    # Mean cosine similarity of each class's test images to each class's text weights: the
    # diagonal should stand out (plotted as similarity.png).
    similarity = torch.full((len(CLASS_NAMES), len(CLASS_NAMES)), float("nan"))
    for c in labels.unique():
        similarity[c] = outputs.logits[labels == c].mean(dim=0)
    return {
        **{key: round(value, 4) for key, value in metrics.items()},
        "similarity": similarity,
        "embeddings": (outputs.image_embeddings, predictions.captions[labels]),
        "examples": _zero_shot_examples(
            model, outputs.image_embeddings, outputs.classifier, labels
        ),
    }


@torch.no_grad()
def _zero_shot_examples(
    model: CLIP,
    image_emb: torch.Tensor,
    classifier: torch.Tensor,
    labels: torch.Tensor,
    count: int = 6,
) -> list[dict[str, Any]]:
    """Top-3 zero-shot predictions (softmax with the model's temperature) of the first images."""
    probs = (model.temperature().cpu() * image_emb[:count] @ classifier.T).softmax(dim=-1)
    values, indices = probs.topk(3, dim=-1)
    return [
        {"index": i, "label": CLASS_NAMES[int(labels[i])],
         "top3": [[CLASS_NAMES[int(c)], round(float(p), 4)]
                  for p, c in zip(values[i], indices[i], strict=True)]}
        for i in range(min(count, len(labels)))
    ]  # fmt: skip
