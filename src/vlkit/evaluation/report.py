"""Evaluation reports: metrics.json, a Markdown summary and matplotlib plots (Agg backend).

`vlkit eval ...` writes, into its output directory:

* ``metrics.json``: the metrics, NaN written as ``null`` (strict JSON has no NaN);
* ``report.md``: Markdown tables of the metrics and the plot embedded as an image;
* one PNG plot, named by the evaluation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# A Markdown section: a heading and {name: value} rows.
Section = tuple[str, Mapping[str, Any]]


def json_safe(value: Any) -> Any:
    """`value` with every NaN/inf float replaced by None, so that `json.dumps` writes strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4f}"
    if value is None:
        return "n/a"
    return str(value)


def _escape(name: Any) -> str:
    # A "|" inside a name (e.g. a question type) would split the cell.
    return str(name).replace("|", "\\|")


def markdown_table(rows: Mapping[str, Any], header: tuple[str, str] = ("metric", "value")) -> str:
    """A two-column Markdown table; floats with 4 decimals, NaN/None as "n/a"."""
    lines = [f"| {header[0]} | {header[1]} |", "| --- | ---: |"]
    lines += [f"| {_escape(k)} | {_format(v)} |" for k, v in rows.items()]
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    title: str,
    metrics: Mapping[str, Any],
    sections: Sequence[Section],
    plot_file: str | None = None,
) -> Path:
    """Writes ``metrics.json`` and ``report.md`` into `out_dir` (created if needed).

    Args:
        out_dir: Output directory.
        title: The report's top heading.
        metrics: Everything to save in metrics.json.
        sections: (heading, rows) pairs rendered as Markdown tables, in order.
        plot_file: A PNG already written into `out_dir`, embedded at the end (relative link, so
            the report renders wherever the directory is copied).

    Returns:
        The path of report.md.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2) + "\n")
    parts = [f"# {title}"]
    parts += [f"## {heading}\n\n{markdown_table(rows)}" for heading, rows in sections]
    if plot_file is not None:
        parts.append(f"![{Path(plot_file).stem}]({plot_file})")
    report = out / "report.md"
    report.write_text("\n\n".join(parts) + "\n")
    return report


def _figure(width: float = 6.4, height: float = 4.0) -> tuple[Any, Any]:
    # Imported here so that `import vlkit.evaluation.report` stays cheap; Agg renders without a
    # display (servers, CI) and is selected without touching the global pyplot backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def bar_chart(values: Mapping[str, float], path: str | Path, title: str, ylabel: str) -> Path:
    """Saves a bar chart of {name: value in [0, 1]} as a PNG (wider for many bars)."""
    figure, ax = _figure(width=max(6.4, 0.35 * len(values) + 2.0))
    names = [str(k) for k in values]
    ax.bar(range(len(names)), [float(v) for v in values.values()], color="tab:blue")
    rotate = len(names) > 6  # long label lists overlap unless slanted
    ax.set_xticks(
        range(len(names)), names, rotation=60 if rotate else 0, ha="right" if rotate else "center"
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    figure.savefig(path, dpi=100)
    return Path(path)


def recall_curve(
    ks: Sequence[int], curves: Mapping[str, Sequence[float]], path: str | Path, title: str
) -> Path:
    """Saves Recall@K against K, one line per curve name, as a PNG."""
    figure, ax = _figure()
    for name, recalls in curves.items():
        ax.plot(list(ks), list(recalls), marker="o", markersize=3, label=name)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    figure.savefig(path, dpi=100)
    return Path(path)


def histogram(values: Sequence[float], path: str | Path, title: str, xlabel: str) -> Path:
    """Saves a histogram of `values` as a PNG."""
    figure, ax = _figure()
    ax.hist(list(values), bins=min(30, max(5, len(values) // 5)), color="tab:blue")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    figure.savefig(path, dpi=100)
    return Path(path)


__all__ = ["bar_chart", "histogram", "json_safe", "markdown_table", "recall_curve", "write_report"]
