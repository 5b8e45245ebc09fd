"""Training small generative VLMs end to end: data, model, the one `Trainer`, evaluation, run dir.

A `VLMRecipe` (training/vlm_recipe.py) names the run: fusion architecture, task, image tower,
decoder shape, step budget and optimisation (the `OptimConfig` every training run uses). `train_vlm` builds a word-level tokenizer from the training text
(vlm_data.py), the fusion VLM around the frozen CLIP image tower (vlm_model.py), trains it with
`VQALMTask` / `CaptionLMTask` in the `Trainer`, evaluates it with the generative evaluators
(`VQAAccuracy`: exact-match answer accuracy; `CaptionMetrics`: CIDEr-D / BLEU-4 / ROUGE-L
against five references per scene) and writes a run directory that `load_vlm_run` (and `vlkit
generate`, `vlkit serve --vlm`) reads back (format: inference/vlm_run_directory.py).

LLaVA's two-stage schedule (Liu et al. 2023, Sec. 4.2) is `connector_only_steps`: first only
the connector trains (decoder frozen), then connector and decoder together for `steps`.

What a run shows and logs, as `vlkit train` does: a tqdm bar per stage (rate, ETA, loss, lr),
`metrics.jsonl` (one file; a "stage" field, and steps counted on across the stages),
TensorBoard scalars under `tensorboard/` when the `train` extra is installed, and
`training_curves.png` (loss and learning rate; a dotted line where stage 2 starts).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlkit.data.datasets.vqa_text import collate_vqa_text
from vlkit.data.tokenizers.word import WordTokenizer
from vlkit.data.transforms import ImageTransform
from vlkit.evaluation.generative import CaptionMetrics, VQAAccuracy
from vlkit.inference.vlm_run_directory import VLMRun, load_vlm_run, save_vlm_run
from vlkit.recipes.vlm_data import build_vlm_data, task_corpus
from vlkit.recipes.vlm_model import build_recipe_model, vision_clip
from vlkit.training.callbacks import (
    JsonlLogger,
    ProgressBar,
    TensorBoardLogger,
    plot_training_curves,
)
from vlkit.training.config import TrainConfig
from vlkit.training.flops import flops_per_sample
from vlkit.training.run_directory import VLM_RUN_FILES, prepare_run_directory
from vlkit.training.trainer import Callback, Trainer
from vlkit.training.vlm_recipe import TASKS, VLMRecipe
from vlkit.training.vlm_task import CaptionLMTask, VQALMTask

__all__ = [
    "TASKS",
    "VLMRecipe",
    "VLMRun",
    "evaluate_vlm",
    "load_vlm_run",
    "train_vlm",
]

CAPTION_KEYS = ("cider_d", "bleu_4", "rouge_l")  # the caption metrics a run summary reports
LOG_EVERY = 10  # steps between metrics.jsonl / TensorBoard rows (as TrainConfig.log_every)


def evaluate_vlm(
    model: nn.Module, test: Any, task: str, max_items: int | None = None, batch_size: int = 256
) -> dict[str, Any]:
    """Greedy-decoded test metrics: answer accuracy (VQA tasks) or caption metrics.

    Returns:
        {"accuracy", "accuracy_<type>" (scene questions)} for VQA tasks; {"cider_d", "bleu_4",
        "rouge_l"} for captions; both with a few {"examples"} (prediction, reference).
    """
    if task == "scene_captions":
        captions = CaptionMetrics(batch_size=batch_size, max_items=max_items)
        predictions = captions.predict(model, test)
        scores = captions.score(predictions, test)
        examples = [(p, test.references(i)[0]) for i, p in enumerate(predictions[:8])]
        return {**{k: scores[k] for k in CAPTION_KEYS}, "examples": examples}
    answers = VQAAccuracy(batch_size=batch_size, max_items=max_items)
    predictions = answers.predict(model, test)
    examples = [(p, test.answer(i)) for i, p in enumerate(predictions[:8])]
    return {**answers.score(predictions, test), "examples": examples}


def _fit(
    recipe: VLMRecipe,
    model: nn.Module,
    task: Any,
    train: Any,
    steps: int,
    out_dir: Path,
    stage: int,
    steps_before: int,
    progress: bool,
) -> float:
    """Runs stage `stage` (after `steps_before` steps of earlier stages) in the `Trainer`, its
    checkpoints in `out_dir/stage<N>/`, its metrics appended to the run's logs; returns its
    training seconds."""
    # The stage's length, and a warm-up of at most a fifth of it.
    warmup = min(recipe.optim.warmup_steps, steps // 5)
    config = TrainConfig(
        optim=replace(recipe.optim, max_steps=steps, warmup_steps=warmup),
        seed=recipe.seed,
        device=recipe.device,
        out_dir=str(out_dir / f"stage{stage}"),
        progress=progress,
        log_every=LOG_EVERY,
    )
    callbacks: list[Callback] = []
    if progress:
        two_stages = bool(recipe.connector_only_steps)
        desc = f"stage {stage}/2" if two_stages else "train"
        callbacks.append(ProgressBar(desc))
    callbacks += [
        JsonlLogger(out_dir / "metrics.jsonl", LOG_EVERY, steps_before, {"stage": stage}),
        TensorBoardLogger(out_dir / "tensorboard", LOG_EVERY, steps_before),
    ]
    summary = Trainer(config, model, task, train, collate_vqa_text, callbacks).fit()
    return float(summary["train_seconds"])


def train_vlm(
    recipe: VLMRecipe, out_dir: str | Path, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Trains, evaluates and saves one generative VLM; returns (and writes) its summary.

    Args:
        recipe: The run.
        out_dir: Run directory (created; stage checkpoints go to `out_dir/stage*/`, metrics to
            `metrics.jsonl` and `training_curves.png`).
        overwrite: When `out_dir` holds a previous run, delete its files (`VLM_RUN_FILES`)
            first; without it such an `out_dir` is refused. Other files are left alone.
        progress: Show a tqdm progress bar per stage.

    Returns:
        Summary with the test metrics, `trainable_parameters`, `total_parameters`,
        `forward_gflops`/`train_gflops` per sample, `train_seconds` and `examples`.

    Raises:
        RunDirectoryError: `out_dir` holds a previous run and `overwrite` is False.
    """
    out_dir = prepare_run_directory(out_dir, VLM_RUN_FILES, overwrite=overwrite)
    clip = vision_clip(recipe)
    tokenizer = WordTokenizer.train(task_corpus(recipe.task))
    transform = ImageTransform(clip.config.preprocess, train=False)
    train, test = build_vlm_data(recipe, tokenizer, transform)
    model = build_recipe_model(recipe, clip, tokenizer)
    task = CaptionLMTask(tokenizer.pad_token_id) if recipe.task == "scene_captions" else VQALMTask()

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    flops = flops_per_sample(model, task, collate_vqa_text([train[i] for i in range(8)]))

    seconds = 0.0
    if recipe.connector_only_steps:
        decoder = getattr(model, "decoder", None)
        if decoder is None:
            raise ValueError(f"connector_only_steps needs a model with a .decoder ({recipe.kind})")
        decoder.requires_grad_(False)
        seconds += _fit(recipe, model, task, train, recipe.connector_only_steps, out_dir,
                        stage=1, steps_before=0, progress=progress)  # fmt: skip
        decoder.requires_grad_(True)
    started = time.perf_counter()
    seconds += _fit(recipe, model, task, train, recipe.steps, out_dir, stage=2,
                    steps_before=recipe.connector_only_steps, progress=progress)  # fmt: skip
    wall = time.perf_counter() - started
    if (out_dir / "metrics.jsonl").is_file():
        plot_training_curves(out_dir / "metrics.jsonl", out_dir / "training_curves.png")

    metrics = evaluate_vlm(model, test, recipe.task, recipe.max_test)
    summary = {
        "kind": recipe.kind,
        "task": recipe.task,
        **metrics,
        "trainable_parameters": trainable,
        "total_parameters": total,
        **flops,
        "train_seconds": round(seconds, 2),
        "main_stage_wall_seconds": round(wall, 2),
        "steps": recipe.steps + recipe.connector_only_steps,
        "test_items": len(test) if recipe.max_test is None else min(recipe.max_test, len(test)),
        "threads": torch.get_num_threads(),
        "device": str(next(model.parameters()).device),
    }
    save_vlm_run(out_dir, model, recipe, model.config, clip.config, tokenizer, summary)
    return summary
