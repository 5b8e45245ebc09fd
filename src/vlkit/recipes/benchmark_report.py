"""`vlkit benchmark`'s report: report.md (one row per task, a "published" column) and plots.

The table lists each task's main metric (`BenchmarkTask.metric`), the published value for a known
checkpoint (`benchmark_tasks.PUBLISHED`, source named under the table), the difference, samples
and seconds; a task whose data was missing shows its one-line reason instead. Plots, in
`OUT/plots/`: per-class zero-shot recall (a bar per class, or the sorted curve for many classes)
and Recall@K curves for retrieval tasks, from `OUT/details/<task>.json`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlkit.evaluation import report
from vlkit.recipes.benchmark_tasks import PUBLISHED_SOURCE, TASKS, checkpoint_key

__all__ = ["write_benchmark_report"]

_MANY_CLASSES = 40  # above this, per-class recall is drawn as a sorted curve


def _number(value: Any, percent: bool = True) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{100 * value:.2f}" if percent else f"{value:.4f}"


def _plots(out: Path, name: str) -> list[str]:
    """The task's plots (relative paths), drawn from its details file."""
    path = out / "details" / f"{name}.json"
    if not path.is_file():
        return []
    details = json.loads(path.read_text())
    (out / "plots").mkdir(exist_ok=True)
    drawn = []
    if "per_class_recall" in details:
        recalls = {k: (v if v is not None else 0.0) for k, v in details["per_class_recall"].items()}
        file = out / "plots" / f"{name}_per_class.png"
        if len(recalls) <= _MANY_CLASSES:
            report.bar_chart(recalls, file, f"{name}: zero-shot recall per class", "recall")
        else:
            ranked = sorted(recalls.values(), reverse=True)
            report.recall_curve(range(1, len(ranked) + 1), {"per-class recall, sorted": ranked},
                                file, f"{name}: zero-shot recall of each class (sorted)")  # fmt: skip
        drawn.append(f"plots/{file.name}")
    if "recall_curves" in details:
        curves = dict(details["recall_curves"])
        ks = curves.pop("ks")
        file = out / "plots" / f"{name}_recall_at_k.png"
        report.recall_curve(ks, curves, file, f"{name}: Recall@K")
        drawn.append(f"plots/{file.name}")
    return drawn


def write_benchmark_report(out: Path, records: Sequence[dict[str, Any]], model: str) -> Path:
    """Writes OUT/report.md (and the plots) for `records`; returns the report's path."""
    key = checkpoint_key(model)
    lines = [f"# vlkit benchmark: {model}", ""]
    lines += ["| task | metric | value | published | diff | samples | seconds |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    plots: list[str] = []
    for record in records:
        name = record.get("benchmark", record["dataset"])
        task = TASKS.get(name)
        metric = task.metric if task else next(iter(record["metrics"]), "")
        if record.get("status") != "ok":
            lines.append(f"| {name} | {record.get('status')}: {record.get('reason', '')} | "
                         "| | | | |")  # fmt: skip
            continue
        value = record["metrics"].get(metric)
        published = task.published.get(key) if task and key else None
        diff = None if published is None or value is None else value - published
        percent = metric not in ("cider_d",)
        lines.append(
            f"| {name} | {metric} | {_number(value, percent)} | {_number(published, percent)} | "
            f"{'n/a' if diff is None else f'{100 * diff:+.2f}'} | {record.get('samples')} | "
            f"{record.get('seconds')} |"
        )
        plots += _plots(out, name)
    lines += ["", "Values in percent (CIDEr-D as is). Published: "
              + (f"{PUBLISHED_SOURCE}, checkpoint {key}." if key else "none for this checkpoint "
                 "(known: OpenAI CLIP ViT-B/32, B/16, L/14).")]  # fmt: skip
    lines += ["", "All metrics of each task: results.jsonl (CLIP_benchmark's record schema)."]
    for plot in plots:
        lines += ["", f"![{Path(plot).stem}]({plot})"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
