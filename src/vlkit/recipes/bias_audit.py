"""`vlkit audit`: zero-shot associations of attribute prompts across the groups of a dataset.

    vlkit audit --model M --data faces.csv --attribute gender \
        --prompts "a photo of a doctor,a photo of a nurse" --out runs/audit

The data is an annotation file (CSV, TSV or JSONL) with an image column and a column naming
each image's group of a sensitive attribute. For every prompt the audit reports:

- per group, the association rate: the fraction of the group's images whose best-scoring
  prompt (zero-shot argmax over the prompts) is this one, with a Wilson interval;
- over the ranking of all images by similarity to the prompt, Skew@k per group, MaxSkew@k,
  MinSkew@k (k in `ks`) and NDKL (Geyik et al. 2019; `vlkit.evaluation.bias_metrics`), with
  percentile-bootstrap intervals for MaxSkew@k and NDKL.

With `debias` pairs ("a photo of a man|a photo of a woman"), every number is reported a second
time with the prompts' embeddings projected off the bias subspace (Chuang et al. 2023,
`vlkit.evaluation.debiasing`), so one run shows what debiasing changes. Outputs in `out`:
audit.json, report.md and association_rates.png; an `out` holding an audit is refused unless
`overwrite`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlkit.data.datasets.metadata_columns import MISSING_VALUE, read_metadata_column
from vlkit.distributed import resolve_device
from vlkit.evaluation import bias_metrics as metrics
from vlkit.evaluation.debiasing import (
    bias_projection,
    calibrated_projection,
    debias_text_embeddings,
    pair_embeddings,
)
from vlkit.evaluation.embeddings import encode_images, encode_texts, image_file_batches
from vlkit.evaluation.report import json_safe
from vlkit.hub.clip_checkpoint import load_clip

__all__ = ["AUDIT_FILES", "AuditConfig", "audit_similarities", "run_audit"]

AUDIT_FILES = ("audit.json", "report.md", "association_rates.png")


@dataclass
class AuditConfig:
    """What `run_audit` measures.

    Attributes:
        prompts: The attribute prompts ("a photo of a doctor", ...), at least two.
        attribute: The column naming each image's group.
        image_column: The column holding the image path (relative to `root`).
        root: Folder of the image paths; default the annotation file's folder.
        ks: Cut-offs for Skew@k (those above the number of images are left out).
        desired: "dataset" (each group's share of the audited images) or "uniform".
        confidence: Level of the Wilson and bootstrap intervals.
        bootstrap: Bootstrap resamples for the ranking metrics' intervals (0: none).
        debias: Bias prompt pairs `(a, b)`; non-empty: also report the debiased numbers.
        equalize: Pairs to map to the same point (Chuang et al.'s calibrated projection, §3.2,
            on top of the `debias` subspace); empty: the orthogonal projection of §3.1.
        seed: Seed of the bootstrap.
        batch_size: Images per forward pass.
        device: "cpu", "cuda", "auto", ...
    """

    prompts: tuple[str, ...]
    attribute: str
    image_column: str = "image"
    root: str | None = None
    ks: tuple[int, ...] = (10, 50, 100)
    desired: str = "dataset"
    confidence: float = 0.95
    bootstrap: int = 1000
    debias: tuple[tuple[str, str], ...] = ()
    equalize: tuple[tuple[str, str], ...] = ()
    seed: int = 0
    batch_size: int = 64
    device: str = "cpu"

    def __post_init__(self) -> None:
        if len(self.prompts) < 2:
            raise ValueError(f"prompts: give at least two prompts, got {list(self.prompts)}")
        if self.desired not in ("dataset", "uniform"):
            raise ValueError(f"desired: 'dataset' or 'uniform', got {self.desired!r}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence: must be in (0, 1), got {self.confidence}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks: positive cut-offs, got {list(self.ks)}")
        if self.equalize and not self.debias:
            raise ValueError("equalize: the calibrated projection needs debias pairs too")


def _ranking_metrics(
    scores: np.ndarray, groups: np.ndarray, ks: list[int], desired: dict[str, float],
    config: AuditConfig, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """Skew@k, MaxSkew@k, MinSkew@k and NDKL of one prompt's ranking, with bootstrap CIs."""
    result: dict[str, Any] = {"ndkl": metrics.ndkl(scores, groups, desired)}
    if config.bootstrap:
        low, high = metrics.bootstrap_interval(
            lambda i: metrics.ndkl(scores[i], groups[i], desired), len(scores), config.bootstrap,
            config.confidence, seed,
        )  # fmt: skip
        result["ndkl_interval"] = [low, high]
    for k in ks:
        skews = metrics.skew_at_k(scores, groups, k, desired)
        entry: dict[str, Any] = {
            "max_skew": max(skews.values()), "min_skew": min(skews.values()), "skew": skews,
        }  # fmt: skip
        if config.bootstrap:
            low, high = metrics.bootstrap_interval(
                lambda i, k=k: metrics.max_skew_at_k(scores[i], groups[i], k, desired),
                len(scores), config.bootstrap, config.confidence, seed,
            )  # fmt: skip
            entry["max_skew_interval"] = [low, high]
        result[f"at_{k}"] = entry
    return result


def audit_similarities(
    similarity: torch.Tensor, groups: list[str], config: AuditConfig
) -> dict[str, Any]:
    """Every number of the audit, from image-prompt similarities (N, P) and the groups (N,).

    Returns:
        `{"groups": {group: images}, "desired": {group: p_q}, "ks": [...], "prompts":
        {prompt: {"association": {group: {rate, low, high, count, images}}, "association_gap":
        max - min rate, "ranking": {"ndkl", "at_K": {max_skew, min_skew, skew}}}},
        "max_association_gap", "mean_max_skew_at_K", "mean_ndkl"}`.
    """
    names = sorted(set(groups))
    member = np.asarray(groups)
    desired_values = metrics.desired_proportions(groups, names, config.desired)
    desired = dict(zip(names, desired_values.tolist(), strict=True))
    ks = [k for k in config.ks if k <= len(groups)] or [len(groups)]
    top = similarity.argmax(dim=1).numpy()
    rates = metrics.association_rates(top, groups, len(config.prompts), names, config.confidence)
    per_prompt: dict[str, Any] = {}
    for p, prompt in enumerate(config.prompts):
        association = {name: rates[name][p] for name in names}
        values = [row["rate"] for row in association.values()]
        scores = similarity[:, p].double().numpy()
        per_prompt[prompt] = {
            "association": association,
            "association_gap": max(values) - min(values),
            "ranking": _ranking_metrics(scores, member, ks, desired, config, config.seed + p),
        }
    rankings = [entry["ranking"] for entry in per_prompt.values()]
    summary = {
        "max_association_gap": max(e["association_gap"] for e in per_prompt.values()),
        "mean_ndkl": float(np.mean([r["ndkl"] for r in rankings])),
        **{f"mean_max_skew_at_{k}": float(np.mean([r[f"at_{k}"]["max_skew"] for r in rankings]))
           for k in ks},
    }  # fmt: skip
    counts = {name: int(np.sum(member == name)) for name in names}
    return {"groups": counts, "desired": desired, "ks": ks, **summary, "prompts": per_prompt}


def _load(annotations: Path, config: AuditConfig) -> tuple[list[str], list[str], int]:
    images = read_metadata_column(annotations, config.image_column)
    groups = read_metadata_column(annotations, config.attribute)
    root = Path(config.root) if config.root is not None else annotations.parent
    keep = [i for i, (image, group) in enumerate(zip(images, groups, strict=True))
            if image != MISSING_VALUE and group != MISSING_VALUE]  # fmt: skip
    return [str(root / images[i]) for i in keep], [groups[i] for i in keep], len(images) - len(keep)


def _plot(panels: list[tuple[str, dict[str, Any]]], path: Path, title: str) -> None:
    """Grouped bars, one panel per result (original, debiased): per prompt, each group's
    association rate with its Wilson interval."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    prompts = list(panels[0][1]["prompts"])
    names = list(panels[0][1]["groups"])
    width = max(5.0, 1.2 * len(prompts) * max(1, len(names) / 2))
    figure = Figure(figsize=(width * len(panels), 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    bar = 0.8 / len(names)
    for ax, (heading, result) in zip(axes, panels, strict=True):
        for g, name in enumerate(names):
            rows = [result["prompts"][p]["association"][name] for p in prompts]
            rates = np.array([r["rate"] for r in rows])
            errors = np.array([[r["rate"] - r["low"] for r in rows],
                               [r["high"] - r["rate"] for r in rows]]).clip(min=0)  # fmt: skip
            positions = np.arange(len(prompts)) - 0.4 + bar * (g + 0.5)
            ax.bar(positions, rates, bar, yerr=errors, capsize=3, label=name)
        ax.set_xticks(range(len(prompts)), prompts, rotation=15 if len(prompts) > 3 else 0)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("association rate (top prompt)")
        ax.set_title(heading)
        ax.legend(title="group")
    figure.suptitle(title)
    figure.savefig(path, dpi=100)


def _fmt(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _markdown(result: dict[str, Any], title: str) -> str:
    names = list(result["groups"])
    lines = [f"## {title}", "", "Association rate (95% Wilson interval) per group:", "",
             "| prompt | " + " | ".join(names) + " | gap |",
             "| --- |" + " ---: |" * (len(names) + 1)]  # fmt: skip
    for prompt, entry in result["prompts"].items():
        cells = [f"{_fmt(a['rate'])} [{_fmt(a['low'])}, {_fmt(a['high'])}]"
                 for a in (entry["association"][n] for n in names)]  # fmt: skip
        lines.append(
            f"| {prompt} | " + " | ".join(cells) + f" | {_fmt(entry['association_gap'])} |"
        )
    ks = result["ks"]
    lines += ["", "Ranking by similarity to the prompt (MaxSkew@k / MinSkew@k, NDKL):", "",
              "| prompt | " + " | ".join(f"MaxSkew@{k} | MinSkew@{k}" for k in ks) + " | NDKL |",
              "| --- |" + " ---: |" * (2 * len(ks) + 1)]  # fmt: skip
    for prompt, entry in result["prompts"].items():
        ranking = entry["ranking"]
        cells = [f"{_fmt(ranking[f'at_{k}']['max_skew'])} | {_fmt(ranking[f'at_{k}']['min_skew'])}"
                 for k in ks]  # fmt: skip
        lines.append(f"| {prompt} | " + " | ".join(cells) + f" | {_fmt(ranking['ndkl'])} |")
    return "\n".join(lines)


def run_audit(
    model: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: AuditConfig,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Runs the audit of the module docstring and writes its files into `out`.

    Args:
        model: A CLIP-like checkpoint directory, file or hub id.
        data: The annotation file with `config.image_column` and `config.attribute`.
        out: Output folder; the files appear together (written in a temporary folder, then
            moved in).
        config: What to measure.
        overwrite: Replace an earlier audit's files in `out`.

    Returns:
        The audit (audit.json's content), plus "out" and "skipped" (images left out: no path,
        no group, or unreadable).

    Raises:
        FileExistsError: `out` holds an audit and `overwrite` is False.
        FileNotFoundError, ValueError: Bad data file or column (named), too few images.
    """
    out = Path(out)
    if not overwrite and any((out / name).exists() for name in AUDIT_FILES):
        raise FileExistsError(f"{out} already holds an audit; pass --overwrite or another --out")
    paths, groups, skipped = _load(Path(data), config)
    device = resolve_device(config.device)
    clip, tokenizer, transform = load_clip(model)
    clip = clip.to(device)
    unreadable: set[str] = set()
    batches = image_file_batches(paths, transform, config.batch_size,
                                 on_skip=lambda path, reason: unreadable.add(path))  # fmt: skip
    images = encode_images(clip, batches)  # (N, D), unreadable files left out
    groups = [g for p, g in zip(paths, groups, strict=True) if p not in unreadable]
    if len(groups) < 2 or len(set(groups)) < 2:
        raise ValueError(f"{data}: need images of at least two groups of {config.attribute!r}, "
                         f"found {len(set(groups))} group(s) in {len(groups)} usable images")  # fmt: skip
    texts = encode_texts(clip, tokenizer, list(config.prompts))  # (P, D)
    result: dict[str, Any] = {"model": str(model), "data": str(data),
                              "config": asdict(config), "skipped": skipped + len(unreadable)}  # fmt: skip
    result["original"] = audit_similarities(images @ texts.T, groups, config)
    if config.debias:
        encode = lambda prompts: encode_texts(clip, tokenizer, list(prompts))  # noqa: E731
        first, second = pair_embeddings(encode, config.debias)
        if config.equalize:
            equalize = pair_embeddings(encode, config.equalize)
            projection = calibrated_projection(first, second, equalize)
        else:
            projection = bias_projection(first, second)
        debiased = debias_text_embeddings(texts, projection)
        result["debiased"] = audit_similarities(images @ debiased.T, groups, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        (staging / "audit.json").write_text(json.dumps(json_safe(result), indent=2) + "\n")
        title = f"Bias audit: {config.attribute} ({len(groups)} images)"
        parts = [f"# {title}", "", f"Model `{model}`, data `{data}`.", "",
                 _markdown(result["original"], "Original prompts")]  # fmt: skip
        if "debiased" in result:
            kind = "calibrated" if config.equalize else "orthogonal"
            parts += ["", _markdown(result["debiased"], f"Debiased prompts ({kind} projection)")]
        parts += ["", "![association rates](association_rates.png)", ""]
        (staging / "report.md").write_text("\n".join(parts))
        panels = [("original prompts", result["original"])]
        if "debiased" in result:
            panels.append(("debiased prompts", result["debiased"]))
        _plot(panels, staging / "association_rates.png", title)
        out.mkdir(exist_ok=True)
        for name in AUDIT_FILES:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**result, "out": str(out)}
