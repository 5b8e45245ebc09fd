"""The demo's outputs for people: training curves, the similarity matrix, example predictions
and report.md (all drawn from the summary and the evaluation of `vlkit.recipes.demo`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlkit.data.datasets.easy_vqa import CLASS_NAMES
from vlkit.evaluation.modality_gap import modality_gap
from vlkit.hub.weights import atomic_write
from vlkit.viz.modality_gap_plot import GapPanel, modality_gap_figure

__all__ = ["plot_examples", "plot_modality_gap", "plot_training", "report_markdown"]


def plot_examples(examples: list[dict[str, Any]], out_dir: Path) -> str:
    """The example test images with their top-3 zero-shot labels (zero_shot_examples.png)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(examples), figsize=(2.3 * len(examples), 3.2))
    for ax, example in zip(list(axes), examples, strict=True):
        ax.imshow(Image.open(example["image"]).convert("RGB"))
        ax.set_axis_off()
        lines = [f"{name} {p:.2f}" for name, p in example["top3"]]
        ax.set_title(f"true: {example['label']}\n" + "\n".join(lines), fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "zero_shot_examples.png", dpi=110)
    plt.close(fig)
    return "zero_shot_examples.png"


def plot_modality_gap(
    before: Sequence[torch.Tensor], after: Sequence[torch.Tensor], out_dir: Path
) -> str:
    """The test images and their captions in a joint 2-D PCA, at initialisation and after
    training (modality_gap.png; `vlkit.viz.modality_gap_plot`)."""
    panels = []
    for title, (image_emb, caption_emb) in (("initialisation", before), ("trained", after)):
        distance = modality_gap(image_emb, caption_emb)["centroid_distance"]
        panels.append(GapPanel(title, image_emb, caption_emb, range(len(image_emb)), distance))
    atomic_write(out_dir / "modality_gap.png", lambda tmp: modality_gap_figure(panels, tmp))
    return "modality_gap.png"


def plot_training(history: dict[str, Any], similarity: torch.Tensor, out_dir: Path) -> list[str]:
    """Loss / temperature curves and the image-class similarity matrix, if matplotlib exists."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed; must precede pyplot's import
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    steps = range(1, len(history["loss"]) + 1)
    fig, (ax_loss, ax_temp) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(steps, history["loss"], lw=0.8, label="per step")
    window = max(1, len(history["loss"]) // 25)
    if window > 1:
        smooth = torch.tensor(history["loss"]).unfold(0, window, 1).mean(dim=1)
        ax_loss.plot(range(window, len(history["loss"]) + 1), smooth, lw=1.6, label="moving avg")
    ax_loss.set(xlabel="step", ylabel="contrastive loss", title="training loss")
    ax_loss.legend()
    ax_temp.plot(steps, history["temperature"], color="tab:orange")
    ax_temp.set(xlabel="step", ylabel="exp(logit_scale)", title="learned temperature (logit scale)")
    fig.tight_layout()
    fig.savefig(out_dir / "training_curves.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8.5, 7.5))
    image = ax.imshow(similarity.numpy(), cmap="viridis")
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=90, fontsize=7)
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES, fontsize=7)
    ax.set(xlabel="class text embedding (prompt ensemble)", ylabel="test images of class")
    ax.set_title("mean cosine similarity, test images vs class texts")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out_dir / "similarity.png", dpi=110)
    plt.close(fig)
    return ["training_curves.png", "similarity.png"]


def report_markdown(summary: dict[str, Any]) -> str:
    c, optim = summary["config"], summary["config"]["optim"]
    lines = [
        "# vlkit demo: CLIP from scratch on easy-VQA",
        "",
        f"Model preset `{summary['preset']}` ({summary['parameters'] / 1e6:.1f} M parameters), "
        f"trained from scratch for {summary['steps']} steps (batch {optim['batch_size']}) in "
        f"{summary['train_seconds']:.0f} s on {summary['threads']} CPU thread(s)"
        + (
            f" - **the time budget stopped training after {summary['steps']} of "
            f"{summary['planned_steps']} steps**"
            if summary["stopped_early"]
            else ""
        )
        + f"; {summary['train_images']} train images, evaluated on {summary['test_images']} "
        "test images.",
        "",
        "| metric (test split) | value |",
        "| --- | --- |",
        f"| zero-shot top-1 (24 classes) | {summary['zero_shot_top1']:.4f} |",
        f"| zero-shot mean per-class recall | {summary['zero_shot_mean_per_class_recall']:.4f} |",
        f"| colour / shape accuracy | {summary['color_accuracy']:.4f} / "
        f"{summary['shape_accuracy']:.4f} |",
        f"| retrieval image->text R@1 | {summary['retrieval_i2t_r1']:.4f} |",
        f"| retrieval text->image R@1 | {summary['retrieval_t2i_r1']:.4f} |",
        f"| loss, first -> last 5% of steps | {summary['initial_loss']:.3f} -> "
        f"{summary['final_loss']:.3f} |",
        f"| final temperature exp(logit_scale) | {summary['final_temperature']:.2f} |",
        f"| modality gap (centroid distance), init -> trained | "
        f"{summary['modality_gap_init']:.3f} -> {summary['modality_gap']:.3f} |",
        f"| mean cosine image-caption, init -> trained | "
        f"{summary['mean_paired_cosine_init']:.3f} -> {summary['mean_paired_cosine']:.3f} |",
        "",
        f"The loss cannot reach 0: a batch of {optim['batch_size']} holds several images of each "
        "class, and their "
        "captions are interchangeable, so the best possible loss is the mean log-count of "
        "same-class pairs per batch.",
        "",
        "Zero-shot: each class's text weight is the re-normalised mean of its normalised "
        f"embeddings over {len(c['templates'])} prompt templates (the caption phrasings used "
        "in training). Retrieval: test images against their canonical captions "
        '"a <colour> <shape>"; since many images share a caption, a retrieved caption or image '
        "counts as a hit when its class matches the query's.",
        "",
        f"Optimiser: AdamW, lr {optim['lr']:g}, {optim['warmup_steps']} warm-up steps then "
        f"cosine to {optim['lr'] * optim['min_lr_ratio']:g}, weight decay "
        f"{optim['weight_decay']:g} on weight "
        "matrices only; logit scale clamped to ln(100). Seed "
        f"{summary['seed']}; {summary['platform']}.",
        "",
    ]
    lines += ["Zero-shot examples (first test images, top-3 classes with probabilities):", "",
              "| image | true class | top-3 |", "| --- | --- | --- |"]  # fmt: skip
    for example in summary["zero_shot_examples"]:
        top3 = ", ".join(f"{name} ({p:.2f})" for name, p in example["top3"])
        lines.append(f"| {Path(example['image']).name} | {example['label']} | {top3} |")
    lines.append("")
    if summary["plots"]:
        lines += [f"![{p}]({p})" for p in summary["plots"]] + [""]
    return "\n".join(lines)
