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
from vlkit.training.config import TrainConfig
from vlkit.training.flops import flops_per_sample
from vlkit.training.trainer import Trainer
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
    recipe: VLMRecipe, model: nn.Module, task: Any, train: Any, steps: int, out_dir: Path
) -> float:
    """Runs one stage in the `Trainer`; returns its training seconds."""
    # The stage's length, and a warm-up of at most a fifth of it.
    warmup = min(recipe.optim.warmup_steps, steps // 5)
    config = TrainConfig(
        optim=replace(recipe.optim, max_steps=steps, warmup_steps=warmup),
        seed=recipe.seed,
        device=recipe.device,
        out_dir=str(out_dir),
        progress=False,
        log_every=50,
    )
    summary = Trainer(config, model, task, train, collate_vqa_text).fit()
    return float(summary["train_seconds"])


def train_vlm(recipe: VLMRecipe, out_dir: str | Path) -> dict[str, Any]:
    """Trains, evaluates and saves one generative VLM; returns (and writes) its summary.

    Args:
        recipe: The run.
        out_dir: Run directory (created; stage checkpoints go to `out_dir/stage*/`).

    Returns:
        Summary with the test metrics, `trainable_parameters`, `total_parameters`,
        `forward_gflops`/`train_gflops` per sample, `train_seconds` and `examples`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
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
        seconds += _fit(recipe, model, task, train, recipe.connector_only_steps, out_dir / "stage1")
        decoder.requires_grad_(True)
    started = time.perf_counter()
    seconds += _fit(recipe, model, task, train, recipe.steps, out_dir / "stage2")
    wall = time.perf_counter() - started

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
