"""Contrastive ablation: batch size x negatives (in-batch / memory bank) x temperature (learned /
fixed 0.01 / 0.07 / 0.5), several seeds, on easy-VQA and the synthetic scenes.

    python benchmarks/contrastive_ablation.py --out runs/contrastive_ablation   # the RESULTS.md grid
    python benchmarks/contrastive_ablation.py --out /tmp/ca --steps 4 --seeds 0 --batch-sizes 8

Every cell trains the `tiny` preset (ViT 2 x 64 wide on 32 px images, text transformer 2 x 64,
embed 64) from scratch with vlkit's one `Trainer` and the task `vlkit train` builds from
`LossConfig` (`vlkit.training.tasks.build_contrastive_task`): the same steps, learning rate and
schedule in every cell; only the batch size, `loss.kind` (clip = in-batch negatives;
memory_bank = MoCo's queue of `--queue` past keys from a momentum-`--momentum` key encoder) and
the temperature (`loss.learn_temperature` / `loss.temperature`; "learned" starts at CLIP's 0.07)
change. Each cell is then evaluated on held-out data with the evaluators `vlkit train
eval.every=...` uses (`recipes.clip_run.build_evaluators`):

- easy-VQA (4,000 training images, 24 colour x shape classes): zero-shot top-1 on the first
  `--eval-limit` test images, prompts from the caption phrasings;
- synthetic scenes (`--scenes` training scenes, 1 to 3 objects): image <-> text retrieval R@1
  (mean of image->text and text->image) between `--eval-limit` held-out scenes and their
  captions.

The table gives mean ± std over the seeds per cell. The cells of one (dataset, seed) run in one
process, which decodes each training sample once for all of them (no augmentation); `--jobs`
such processes run side by side (default 2, the machine's cores). The defaults (tiny towers, 40
steps, batch 8 / 32, 3 seeds: 96 runs) are sized for a 2-core CPU shared with other work: about
6 CPU minutes in all, the wall time depending on the load (the report records both).

Writes `OUT/results.json` (settings, machine, every run, the cell summaries), `OUT/table.md` and
`OUT/ablation.png` (one panel per dataset), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch
from machine import cpu_name
from torch.utils.data import Dataset
from tqdm import tqdm

from vlkit.data.collate import collate_image_text
from vlkit.data.datasets.easy_vqa import CLASS_NAMES
from vlkit.hub.weights import atomic_write
from vlkit.recipes.clip_run import build_dataset, build_evaluators, build_model
from vlkit.training.config import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LossConfig,
    OptimConfig,
    TrainConfig,
)
from vlkit.training.tasks import build_contrastive_task
from vlkit.training.trainer import Trainer

TEMPERATURES: tuple[str, ...] = ("learned", "0.01", "0.07", "0.5")
NEGATIVES: dict[str, str] = {"in-batch": "clip", "memory bank": "memory_bank"}
DATASETS: dict[str, str] = {"easy_vqa": "zero-shot top-1", "shapes": "retrieval R@1"}


class CachedSamples(Dataset):
    """A map-style dataset whose samples are computed once per key (index or (index, seed)),
    shared by every cell that trains on the same data; safe because augmentation is off."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.samples: dict[Hashable, Any] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Hashable) -> Any:
        if key not in self.samples:
            self.samples[key] = self.dataset[key]
        return self.samples[key]


def cell_config(args: argparse.Namespace, source: str, batch: int, negatives: str,
                temperature: str, seed: int, out_dir: str) -> TrainConfig:  # fmt: skip
    learned = temperature == "learned"
    return TrainConfig(
        model="tiny", seed=seed, device="cpu", progress=False, out_dir=out_dir,
        data=DataConfig(source=source, num_samples=args.scenes, augment=False),
        optim=OptimConfig(batch_size=batch, max_steps=args.steps, lr=args.lr,
                          warmup_steps=max(1, args.steps // 10), min_lr_ratio=0.1,
                          weight_decay=0.1),
        loss=LossConfig(kind=NEGATIVES[negatives], learn_temperature=learned,
                        temperature=None if learned else float(temperature),
                        memory_bank_size=args.queue, momentum=args.momentum),
        checkpoint=CheckpointConfig(every=0, keep_last=1),
        eval=EvalConfig(limit=args.eval_limit),
    )  # fmt: skip


def score(metrics: dict[str, float], source: str) -> float:
    if source == "easy_vqa":
        return metrics["zero_shot/top1"]
    return (metrics["retrieval/i2t_r1"] + metrics["retrieval/t2i_r1"]) / 2


def run_cell(config: TrainConfig, train_data: dict, evaluators: dict) -> dict[str, float]:
    """Trains one cell (into a temporary run directory) and evaluates it."""
    key = (config.data.source, config.seed)
    model = build_model(config)  # torch.manual_seed(config.seed): the same start per seed
    if key not in train_data:
        train_data[key] = CachedSamples(build_dataset(config, model))
        evaluators[key] = build_evaluators(config, model)
    task = build_contrastive_task(config, model)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, model, task, train_data[key], collate_image_text,
                          checkpoint_dir=f"{run_dir}/checkpoints")  # fmt: skip
        summary = trainer.fit()
    metrics = {}
    for name, (evaluator, data) in evaluators[key].items():
        metrics.update({f"{name}/{k}": v for k, v in evaluator.evaluate(model, data).items()})
    return {
        "score": score(metrics, config.data.source),
        "final_loss": summary["final_loss"],
        "final_temperature": 1.0 / float(model.temperature().detach()),
        "mi_lower_bound": trainer.last_metrics.get("mi_lower_bound"),
        "seconds": round(time.perf_counter() - started, 2),
        **metrics,
    }


def run_chunk(
    args: argparse.Namespace, chunk: list[tuple], on_done: Callable[[int], Any] | None = None
) -> list[dict]:
    """Runs cells in this process, in order; returns one row per cell."""
    torch.set_num_threads(args.threads)
    train_data: dict = {}
    evaluators: dict = {}
    rows = []
    for source, batch, negatives, temperature, seed in chunk:
        config = cell_config(args, source, batch, negatives, temperature, seed, "unused")
        result = run_cell(config, train_data, evaluators)
        rows.append({"dataset": source, "batch_size": batch, "negatives": negatives,
                     "temperature": temperature, "seed": seed, **result})  # fmt: skip
        if on_done is not None:
            on_done(1)
    return rows


def summarize(runs: list[dict]) -> list[dict]:
    """Mean ± std (population std over the seeds) of each cell's score."""
    cells: dict[tuple, list[dict]] = {}
    for run in runs:
        cells.setdefault((run["dataset"], run["batch_size"], run["negatives"],
                          run["temperature"]), []).append(run)  # fmt: skip
    summary = []
    for (dataset, batch, negatives, temperature), group in cells.items():
        scores = [run["score"] for run in group]
        summary.append({
            "dataset": dataset, "batch_size": batch, "negatives": negatives,
            "temperature": temperature, "mean": statistics.fmean(scores),
            "std": statistics.pstdev(scores), "seeds": [run["seed"] for run in group],
            "scores": scores,
            "final_temperature": statistics.fmean(run["final_temperature"] for run in group),
        })  # fmt: skip
    return summary


def table(summary: list[dict], eval_limit: int) -> str:
    lines = []
    for dataset, metric in DATASETS.items():
        rows = [cell for cell in summary if cell["dataset"] == dataset]
        if not rows:
            continue
        level = chance(dataset, eval_limit)
        lines += [f"**{dataset}**: {metric}, mean ± std over seeds (chance {level:.3f})", "",
                  "| batch | negatives | " + " | ".join(f"τ {t}" for t in TEMPERATURES) + " |",
                  "|---|---|" + "---|" * len(TEMPERATURES)]  # fmt: skip
        keys = sorted({(cell["batch_size"], cell["negatives"]) for cell in rows},
                      key=lambda k: (k[0], list(NEGATIVES).index(k[1])))  # fmt: skip
        for batch, negatives in keys:
            values = []
            for temperature in TEMPERATURES:
                found = [c for c in rows if (c["batch_size"], c["negatives"], c["temperature"])
                         == (batch, negatives, temperature)]  # fmt: skip
                values.append(f"{found[0]['mean']:.3f} ± {found[0]['std']:.3f}" if found else "")
            lines.append(f"| {batch} | {negatives} | " + " | ".join(values) + " |")
        learned = [c for c in rows if c["temperature"] == "learned"]
        if learned:
            taus = ", ".join(f"{c['batch_size']}/{c['negatives']}: {c['final_temperature']:.3f}"
                             for c in learned)  # fmt: skip
            lines += ["", f"final learned τ: {taus}"]
        lines.append("")
    return "\n".join(lines)


def chance(dataset: str, eval_limit: int) -> float:
    """The score of random embeddings: 1 / 24 classes; R@1 1 / N among N held-out scenes."""
    return 1 / len(CLASS_NAMES) if dataset == "easy_vqa" else 1 / eval_limit


def plot(summary: list[dict], path: Path, eval_limit: int) -> None:
    import matplotlib  # optional dependency of the plot only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in DATASETS if any(c["dataset"] == d for c in summary)]
    figure, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for axis, dataset in zip(axes[0], datasets, strict=True):
        rows = [c for c in summary if c["dataset"] == dataset]
        series = sorted({(c["batch_size"], c["negatives"]) for c in rows})
        width = 0.8 / len(series)
        for i, (batch, negatives) in enumerate(series):
            cells = {c["temperature"]: c for c in rows
                     if (c["batch_size"], c["negatives"]) == (batch, negatives)}  # fmt: skip
            xs = [j + i * width for j, t in enumerate(TEMPERATURES) if t in cells]
            axis.bar(xs, [cells[t]["mean"] for t in TEMPERATURES if t in cells], width,
                     yerr=[cells[t]["std"] for t in TEMPERATURES if t in cells], capsize=2,
                     label=f"batch {batch}, {negatives}")  # fmt: skip
        axis.set_xticks([j + 0.4 - width / 2 for j in range(len(TEMPERATURES))],
                        [f"τ {t}" for t in TEMPERATURES])  # fmt: skip
        level = chance(dataset, eval_limit)
        axis.axhline(level, color="gray", linestyle="--", linewidth=1, label=f"chance {level:.3f}")
        top = max(c["mean"] + c["std"] for c in rows)
        axis.set(ylim=(0, max(top, level) * 1.25), ylabel=DATASETS[dataset], title=dataset)
        axis.legend(fontsize=7)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=120, format="png"))
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory (refused if it has results)")
    parser.add_argument("--overwrite", action="store_true", help="replace results in --out")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--temperatures", nargs="+", choices=TEMPERATURES, default=TEMPERATURES)
    parser.add_argument("--negatives", nargs="+", choices=list(NEGATIVES), default=list(NEGATIVES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per cell")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--queue", type=int, default=128, help="memory-bank size (keys)")
    parser.add_argument("--momentum", type=float, default=0.9, help="key-encoder EMA momentum")
    parser.add_argument("--scenes", type=int, default=2000, help="training scenes (shapes)")
    parser.add_argument("--eval-limit", type=int, default=200, help="held-out examples")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per job")
    parser.add_argument("--jobs", type=int, default=2, help="cells trained in parallel processes")
    args = parser.parse_args()
    if min(args.batch_sizes) < 2 or min(args.steps, args.eval_limit, args.jobs) < 1:
        parser.error("--batch-sizes must be >= 2, --steps, --eval-limit and --jobs >= 1")
    out = Path(args.out)
    if (out / "results.json").exists() and not args.overwrite:
        parser.error(f"--out {out} already holds results.json (add --overwrite to replace it)")
    out.mkdir(parents=True, exist_ok=True)

    # One chunk per (dataset, seed): its cells share the decoded training samples.
    chunks = [[(source, batch, negatives, temperature, seed) for batch in args.batch_sizes
               for negatives in args.negatives for temperature in args.temperatures]
              for source in args.datasets for seed in args.seeds]  # fmt: skip
    started = time.perf_counter()
    runs = []
    progress = tqdm(total=sum(map(len, chunks)), desc="cells", unit="run")
    if args.jobs == 1:
        for chunk in chunks:
            runs += run_chunk(args, chunk, progress.update)
    else:  # fresh processes (spawn): no torch state forked mid-flight
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            for done in as_completed([pool.submit(run_chunk, args, chunk) for chunk in chunks]):
                runs += done.result()
                progress.update(len(done.result()))
    progress.close()
    seconds = time.perf_counter() - started
    # CPU time of this process and the finished job processes: what the grid costs on an idle
    # machine (the wall time above depends on what else runs).
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu_seconds = sum(u.ru_utime + u.ru_stime for u in usage)
    order = {cell: i for i, cell in enumerate(cell for chunk in chunks for cell in chunk)}
    runs.sort(key=lambda run: order[(run["dataset"], run["batch_size"], run["negatives"],
                                     run["temperature"], run["seed"])])  # fmt: skip
    summary = summarize(runs)
    report = {
        "command": shlex.join(["python", "benchmarks/contrastive_ablation.py", *sys.argv[1:]]),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch_threads": args.threads,
            "jobs": args.jobs,
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "overwrite")},
        "model": "tiny",
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "cells": summary,
        "runs": runs,
    }
    text = table(summary, args.eval_limit)
    atomic_write(out / "results.json",
                 lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))  # fmt: skip
    atomic_write(out / "table.md", lambda tmp: tmp.write_text(text + "\n"))
    plot(summary, out / "ablation.png", args.eval_limit)
    print(text)
    print(
        f"{len(runs)} runs in {seconds / 60:.1f} min ({cpu_seconds / 60:.1f} CPU min); wrote "
        f"{out}/results.json, table.md, ablation.png"
    )


if __name__ == "__main__":
    main()
