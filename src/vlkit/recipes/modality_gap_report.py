"""`vlkit gap`: the modality gap of CLIP-like models on an image-text set, as numbers and a plot.

For each model (the trained one and, optionally, a `before` one, e.g. the initialisation or the
checkpoint training started from) the images and captions of the set are embedded, and the report
gives the modality gap of Liang et al. 2022 ("Mind the Gap", arXiv:2203.02053): the distance
between the centroids of the L2-normalised image and text embeddings
(`vlkit.evaluation.modality_gap`), with the centroids' norms and the mean cosine of each caption
with its image. The picture is the joint 2-D PCA of both modalities (`vlkit.viz.modality_gap_plot`),
one panel per model.

The set is one of the files `vlkit eval retrieval` and `vlkit train` read:
* a COCO captions JSON (``{"images": [{"id", "file_name"}], "annotations": [{"image_id",
  "caption"}]}``), as `vlkit eval retrieval --captions`;
* a CSV / TSV / JSONL annotation file with `image` and `caption` columns (JSONL: a caption may be a
  list), as `vlkit train data.source=folder data.annotations=...`;
* a folder holding one of those under the names `captions.json`, `annotations.jsonl`,
  `captions.csv` (the layout `vlkit.data.datasets.shapes` writes).
Image paths are relative to `images_root` (default: the annotation file's folder).

Outputs in `out_dir`: gap.json (the numbers) and gap.png (the plot). An existing gap.json is
never replaced unless `overwrite` is set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlkit.data.datasets.annotations import read_annotations, valid_captions
from vlkit.distributed import resolve_device
from vlkit.evaluation.benchmark_files import read_coco_retrieval
from vlkit.evaluation.embeddings import encode_images, encode_texts, image_file_batches
from vlkit.evaluation.evaluator import eval_mode
from vlkit.evaluation.modality_gap import modality_gap_metrics
from vlkit.hub.clip_checkpoint import load_clip
from vlkit.hub.weights import atomic_write
from vlkit.viz.modality_gap_plot import GapPanel, modality_gap_figure

__all__ = ["ImageTextPairs", "modality_gap_report", "read_image_text_pairs"]

FOLDER_FILES = ("captions.json", "annotations.jsonl", "captions.csv")
ANNOTATION_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson")


@dataclass
class ImageTextPairs:
    """Images and their captions: `captions[j]` describes `images[caption_image[j]]`."""

    images: list[Path]
    captions: list[str]
    caption_image: list[int]

    def first(self, max_images: int | None) -> ImageTextPairs:
        """The first `max_images` images and their captions (all when None)."""
        if max_images is None or max_images >= len(self.images):
            return self
        kept = [j for j, i in enumerate(self.caption_image) if i < max_images]
        return ImageTextPairs(self.images[:max_images], [self.captions[j] for j in kept],
                              [self.caption_image[j] for j in kept])  # fmt: skip


def read_image_text_pairs(
    data: str | os.PathLike[str],
    images_root: str | os.PathLike[str] | None = None,
    what: str = "--data",
) -> ImageTextPairs:
    """Reads a COCO captions JSON, a CSV / TSV / JSONL annotation file, or a folder holding one.

    Raises:
        ValueError: No such file, an unknown file type, or a line without a usable image or
            caption (the message names `what`, the file and the line).
    """
    path = Path(data)
    if path.is_dir():
        found = [path / name for name in FOLDER_FILES if (path / name).is_file()]
        if not found:
            raise ValueError(f"{what} {path}: a folder without {', '.join(FOLDER_FILES)}")
        path = found[0]
    if not path.exists():
        raise ValueError(f"{what} {path}: no such file or folder")
    root = Path(images_root) if images_root is not None else path.parent
    suffix = path.suffix.lower()
    if suffix == ".json":
        names, captions, caption_image = read_coco_retrieval(path, what)
        return ImageTextPairs([root / name for name in names], captions, caption_image)
    if suffix not in ANNOTATION_SUFFIXES:
        raise ValueError(f"{what} {path}: unknown file type {suffix or '(none)'!r}; allowed: "
                         ".json (COCO captions), .csv, .tsv, .jsonl, or a folder")  # fmt: skip
    images: list[Path] = []
    index: dict[Path, int] = {}
    pairs = ImageTextPairs(images, [], [])
    for record in read_annotations(path):
        texts, reason = valid_captions(record.captions)
        problem = record.problem or reason
        if problem:
            raise ValueError(f"{what} {path}: line {record.line}: {problem}")
        image = root / str(record.image)
        if image not in index:  # an image listed on several lines is embedded once
            index[image] = len(images)
            images.append(image)
        pairs.captions.extend(texts)
        pairs.caption_image.extend([index[image]] * len(texts))
    if not images:
        raise ValueError(f"{what} {path}: no image-caption lines")
    return pairs


@torch.no_grad()
def _embed(
    model_path: str, pairs: ImageTextPairs, batch_size: int, device: str, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (N, D), text (M, D)) unit embeddings; the first unreadable image raises."""
    from tqdm.auto import tqdm  # the progress bar is optional decoration

    model, tokenizer, transform = load_clip(model_path)
    model.to(resolve_device(device))
    batches = image_file_batches(pairs.images, transform, batch_size)
    with eval_mode(model):
        bar = tqdm(total=len(pairs.images), desc=f"embed {model_path}", unit="img",
                   disable=not progress)  # fmt: skip
        with bar:
            image_emb = encode_images(model, _counted(batches, bar))
        text_emb = encode_texts(model, tokenizer, pairs.captions)
    return image_emb, text_emb


def _counted(batches: Any, bar: Any) -> Any:
    for batch in batches:
        bar.update(len(batch))
        yield batch


def modality_gap_report(
    model: str,
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    before: str | None = None,
    images_root: str | os.PathLike[str] | None = None,
    max_images: int | None = None,
    batch_size: int = 64,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    labels: Sequence[str] = ("before", "after"),
) -> dict[str, Any]:
    """Measures and draws the modality gap of `model` (and of `before`) on an image-text set.

    Args:
        model: The (trained) checkpoint directory or hub id.
        data: The image-text set (see the module docstring).
        out_dir: Where gap.json and gap.png go (created).
        before: Another checkpoint to compare with (e.g. before training), or None.
        images_root: Folder the image paths are relative to (default: the data file's folder).
        max_images: Use the first N images and their captions only.
        batch_size: Images per forward pass.
        device: "auto", "cpu", "cuda", "cuda:N".
        overwrite: Replace an existing out_dir/gap.json.
        progress: Show a progress bar while images are embedded.
        labels: Panel names of `before` and `model` when both are given.

    Returns:
        What gap.json holds: {"model", "data", "num_images", "num_texts", "after": metrics,
        "plot"} and, with `before`, {"before_model", "before": metrics, "gap_change"}; metrics
        are `modality_gap_metrics`' keys plus "pca_explained_variance" of the drawn panel.
    """
    out = Path(out_dir)
    if (out / "gap.json").exists() and not overwrite:
        raise FileExistsError(f"{out / 'gap.json'} exists; pass --overwrite to replace it")
    if batch_size < 1 or (max_images is not None and max_images < 1):
        raise ValueError("batch_size and max_images must be at least 1")
    pairs = read_image_text_pairs(data, images_root).first(max_images)
    runs = [(labels[0], before), (labels[1], model)] if before is not None else [(None, model)]
    measured: list[tuple[str | None, dict[str, Any], GapPanel]] = []
    for label, path in runs:
        image_emb, text_emb = _embed(path, pairs, batch_size, device, progress)
        metrics = modality_gap_metrics(image_emb, text_emb, pairs.caption_image)
        title = f"{label}: {path}" if label else str(path)
        panel = GapPanel(title, image_emb, text_emb, pairs.caption_image, metrics["modality_gap"])
        measured.append((label, metrics, panel))

    out.mkdir(parents=True, exist_ok=True)
    explained: list[float] = []
    atomic_write(out / "gap.png", lambda tmp: explained.extend(
        modality_gap_figure([panel for _, _, panel in measured], tmp)))  # fmt: skip
    for (_, metrics, _), ratio in zip(measured, explained, strict=True):
        metrics["pca_explained_variance"] = ratio
    result: dict[str, Any] = {"model": str(model), "data": str(data),
                              "num_images": len(pairs.images), "num_texts": len(pairs.captions),
                              "after": measured[-1][1], "plot": "gap.png"}  # fmt: skip
    if before is not None:
        result["before_model"] = str(before)
        result["before"] = measured[0][1]
        result["gap_change"] = measured[1][1]["modality_gap"] - measured[0][1]["modality_gap"]
    text = json.dumps(result, indent=2) + "\n"
    atomic_write(out / "gap.json", lambda tmp: tmp.write_text(text))
    return result
