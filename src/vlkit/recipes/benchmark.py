"""`vlkit benchmark`: a model on standard benchmarks read from disk, CLIP_benchmark-style results.

    records = run_benchmark(BenchmarkConfig(model="ViT-B-32-dir", tasks="imagenet1k,cifar10",
                                            data_root="data", out_dir="runs/bench"))
    vlkit benchmark --model M --tasks imagenet1k,cifar10,coco_retrieval --data-root DIR --out OUT

For each task of `benchmark_tasks.TASKS`, in order: its data directory (`--data PATH` for that
task, else `DIR/<data_dir>`) is read by the task's dataset adapter, the task runs (contrastive:
`benchmark_contrastive.py`; VQA / captions: `generative_benchmark.run_generative_task`; MM-Vet:
`mmvet_run.run_mmvet`) and its record is appended to `OUT/results.jsonl` at once:

    {"dataset", "model", "pretrained", "task", "metrics": {...}, "language": "en",   # CLIP_benchmark
     "benchmark": task name, "seconds", "samples", "status": "ok"}                   # vlkit's extras

A task whose data is missing (or cannot be read) gets a record with `"status": "missing"` and the
one-line reason, and the run goes on with the next task. `report.md` and the plots (`plots/`) are
rewritten after every task (`benchmark_report.py`). An OUT that already holds results is refused
unless `resume` (tasks already recorded as done are skipped, the others run) or `overwrite` (the
previous results are deleted first), as other runs' directories are (training/run_directory.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlkit.distributed import resolve_device
from vlkit.evaluation.report import json_safe
from vlkit.hub.weights import atomic_write
from vlkit.layers.packed_linear import pack_linear_layers
from vlkit.recipes.benchmark_contrastive import linear_probe_task, retrieval_task, zeroshot_task
from vlkit.recipes.benchmark_report import write_benchmark_report
from vlkit.recipes.benchmark_tasks import CONTRASTIVE_KINDS, BenchmarkTask, resolve_tasks
from vlkit.recipes.prediction_cache import read_json_lines
from vlkit.training.run_directory import prepare_run_directory

__all__ = ["BENCHMARK_FILES", "BenchmarkConfig", "read_results", "run_benchmark"]

# What a benchmark run writes into its out_dir (the files --overwrite deletes).
BENCHMARK_FILES = ("results.jsonl", "report.md", "plots", "details", "generative", "mmvet")
RESULTS = "results.jsonl"


@dataclass
class BenchmarkConfig:
    """A `vlkit benchmark` run.

    Attributes:
        model: A checkpoint directory or hub id (vlkit, Hugging Face or open_clip CLIP for the
            contrastive tasks; a SmolVLM / LLaVA / VLM run for the generative ones).
        tasks: Task names (`benchmark_tasks.TASKS`), a list or comma-separated.
        out_dir: Where results.jsonl, report.md and plots/ go.
        data_root: DIR holding each dataset under its task's `data_dir`.
        data: {task name: directory} for tasks read from elsewhere (`--data`).
        limit: Evaluate the first N samples of each task only.
        batch_size: Images per forward pass (samples per generation batch).
        device: "auto", "cpu", "cuda", ...
        workers: DataLoader worker processes decoding images (0: in the main process).
        amp: CLIP_benchmark's autocast (bf16 on CPU, fp16 on CUDA); default fp32.
        packed_linear: In fp32 on an x86 CPU, run a contrastive model's linear layers on oneDNN
            with pre-packed weights and fused activations (`vlkit.layers.packed_linear`: ~20%
            faster, scores equal to PyTorch's within ~1e-6); False: PyTorch's own kernels.
        recall_k: The K of the retrieval records' recall@K.
        seed: The linear probe's seed.
        val_proportion: The linear probe holds out this share of the training split and picks
            its weight decay there (clip_benchmark's `--val_proportion`); None: weight decay 0.
        judge: MM-Vet's judge ("openai", "openai:MODEL", "local:PATH").
        judge_runs: MM-Vet judge runs (mean and std).
        resume: Continue a run in out_dir (tasks recorded as done are skipped).
        overwrite: Delete a previous run's results first.
        progress: Show progress bars.
    """

    model: str
    tasks: str | list[str]
    out_dir: str | Path
    data_root: str | Path | None = None
    data: dict[str, str | Path] = field(default_factory=dict)
    limit: int | None = None
    batch_size: int = 64
    device: str = "auto"
    workers: int = 2
    amp: bool = False
    packed_linear: bool = True
    recall_k: tuple[int, ...] = (1, 5, 10)
    seed: int = 0
    val_proportion: float | None = None
    judge: str = "openai"
    judge_runs: int = 1
    resume: bool = False
    overwrite: bool = False
    progress: bool = True


def read_results(out_dir: str | Path) -> list[dict[str, Any]]:
    """The records of `out_dir/results.jsonl` (the last record of a task wins), in file order."""
    records: dict[str, dict[str, Any]] = {}
    for record in _result_lines(Path(out_dir) / RESULTS):
        records.pop(record.get("benchmark", record["dataset"]), None)
        records[record.get("benchmark", record["dataset"])] = record
    return list(records.values())


def _result_lines(path: Path) -> list[dict[str, Any]]:
    """Every record of results.jsonl, in file order. A last line cut short (a run killed while
    appending, before records were written atomically) is dropped; a bad line elsewhere is
    refused in one line naming it."""
    if not path.is_file():
        return []
    return read_json_lines(path)[0]


def _append_record(out: Path, record: dict[str, Any]) -> None:
    """results.jsonl with `record` appended, rewritten atomically: a killed run leaves the old
    file or the new one, never a torn record that a resumed run would glue its next one to."""
    lines = [json.dumps(r) for r in _result_lines(out / RESULTS)] + [json.dumps(record)]
    text = "".join(line + "\n" for line in lines)
    atomic_write(out / RESULTS, lambda temporary: temporary.write_text(text))


class _Model:
    """The contrastive model, loaded once when the first contrastive task needs it."""

    def __init__(self, name: str, device: torch.device, packed_linear: bool = False) -> None:
        self.name, self.device, self.loaded = name, device, None
        self.packed_linear = packed_linear

    def get(self) -> tuple[Any, Any, Any]:
        if self.loaded is None:
            from vlkit.hub.clip_checkpoint import load_clip

            model, tokenizer, transform = load_clip(self.name)
            model = model.to(self.device).eval()
            if self.packed_linear and self.device.type == "cpu":
                # Evaluated only: the original weights are freed (no second copy in memory).
                pack_linear_layers(model, keep_weights=False)  # a no-op without oneDNN kernels
            self.loaded = (model, tokenizer, transform)
        return self.loaded


def _data_dir(config: BenchmarkConfig, task: BenchmarkTask) -> Path:
    if task.name in config.data:
        return Path(config.data[task.name])
    if config.data_root is None:
        raise FileNotFoundError(
            f"{task.name}: no --data-root and no --data {task.name}=PATH (expected {task.layout})"
        )
    return Path(config.data_root) / task.data_dir


def _read(task: BenchmarkTask, root: Path, limit: int | None, split: str = "test") -> Any:
    """The task's dataset; a missing directory is reported with the task's layout."""
    if not root.exists():
        raise FileNotFoundError(f"{task.name}: {root} does not exist (expected {task.layout})")
    return task.dataset(root, limit, split=split)


def _run_task(task: BenchmarkTask, config: BenchmarkConfig, model: _Model, out: Path) -> dict:
    """Runs one task; returns its record's metrics, sample count and details."""
    root = _data_dir(config, task)
    common = dict(batch_size=config.batch_size, workers=config.workers, amp=config.amp,
                  progress=config.progress)  # fmt: skip
    if task.kind in CONTRASTIVE_KINDS:
        test_set = _read(task, root, config.limit)
        clip, tokenizer, transform = model.get()
        if task.kind == "zeroshot":
            metrics, details = zeroshot_task(clip, tokenizer, transform, test_set, model.device,
                                             **common)  # fmt: skip
        elif task.kind == "retrieval":
            metrics, details = retrieval_task(clip, tokenizer, transform, test_set, model.device,
                                              recall_k=config.recall_k, **common)  # fmt: skip
        else:
            train_set = _read(task, root, config.limit, split="train")
            metrics, details = linear_probe_task(clip, transform, train_set, test_set,
                                                 model.device, seed=config.seed,
                                                 val_proportion=config.val_proportion,
                                                 **common)  # fmt: skip
        return {"metrics": metrics, "samples": len(test_set), "details": details}
    if task.kind == "mmvet":
        from vlkit.recipes.mmvet_run import run_mmvet

        _read(task, root, config.limit)  # a missing dataset is reported before the model loads
        record = run_mmvet(config.model, root, out / "mmvet", config.judge,
                           runs=config.judge_runs, limit=config.limit, device=str(model.device),
                           batch_size=config.batch_size, progress=config.progress)  # fmt: skip
    else:
        from vlkit.recipes.generative_benchmark import run_generative_task

        dataset = _read(task, root, config.limit)
        record = run_generative_task(config.model, task.name, dataset, out / "generative",
                                     limit=config.limit, batch_size=config.batch_size,
                                     device=str(model.device), progress=config.progress)  # fmt: skip
    return {"metrics": record["metrics"], "samples": record.get("samples"), "details": {}}


def run_benchmark(config: BenchmarkConfig) -> list[dict[str, Any]]:
    """Runs the tasks, appending one record per task to OUT/results.jsonl; returns all records.

    Raises:
        ValueError: An unknown task, a bad setting, or an OUT that holds results (without
            resume / overwrite).
    """
    tasks = resolve_tasks(config.tasks)
    unknown = [name for name in config.data if name not in {t.name for t in tasks}]
    if unknown:
        raise ValueError(f"--data {unknown[0]}=...: not one of the --tasks being run")
    if config.limit is not None and config.limit < 1:
        raise ValueError(f"--limit {config.limit}: must be at least 1")
    if config.val_proportion is not None and not 0 < config.val_proportion < 1:
        raise ValueError(f"--val-proportion {config.val_proportion}: must be in (0, 1)")
    if config.data_root is not None and not Path(config.data_root).is_dir():
        raise ValueError(f"--data-root {config.data_root}: no such directory")
    if any(task.kind == "mmvet" for task in tasks):
        _check_judge(config.judge)  # before hours of other tasks, not after them
    device = resolve_device(config.device, "--device")
    out = prepare_run_directory(config.out_dir, BENCHMARK_FILES, resume=config.resume,
                                overwrite=config.overwrite)  # fmt: skip
    done = {r["benchmark"] for r in read_results(out) if r.get("status") == "ok"}
    # Packed fp32 kernels only: under autocast the linear layers must follow its bf16 / fp16 casts.
    model = _Model(config.model, device, packed_linear=config.packed_linear and not config.amp)
    for task in tasks:
        if task.name in done:
            continue
        record: dict[str, Any] = {
            "dataset": task.dataset_name,
            "model": config.model,
            "pretrained": config.model,
            "task": task.clip_benchmark_task,
            "metrics": {},
            "language": "en",
            "benchmark": task.name,
        }
        start = time.perf_counter()
        try:
            result = _run_task(task, config, model, out)
        except FileNotFoundError as error:
            record.update(status="missing", reason=str(error).splitlines()[0], seconds=0.0,
                          samples=0)  # fmt: skip
        else:
            record.update(metrics=result["metrics"], status="ok", samples=result["samples"],
                          seconds=round(time.perf_counter() - start, 3))  # fmt: skip
            _write_details(out, task.name, result["details"])
        _append_record(out, json_safe(record))
        write_benchmark_report(out, read_results(out), config.model)
    return read_results(out)


def _check_judge(spec: str) -> None:
    """Refuses a judge spec `judge_from_spec` would refuse, without loading a local judge."""
    from vlkit.evaluation.judges import JUDGE_SPECS, OpenAIChatJudge

    kind, _, value = spec.partition(":")
    if kind == "openai":
        OpenAIChatJudge.from_env(model=value or None)  # an API key where one is needed
    elif kind != "local" or not value:
        raise ValueError(f"--judge {spec!r}: expected {JUDGE_SPECS}")


def _write_details(out: Path, name: str, details: dict[str, Any]) -> None:
    """OUT/details/<task>.json: what the report plots (per-class recall, Recall@K curves)."""
    if details:
        (out / "details").mkdir(exist_ok=True)
        (out / "details" / f"{name}.json").write_text(json.dumps(json_safe(details)))
