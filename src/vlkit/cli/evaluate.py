"""`vlkit eval ...`: standard benchmarks from files on disk, to metrics.json + report.md + a plot.

* zeroshot: an ImageFolder tree (one subfolder per class, class name = folder name with "_" ->
  " ") classified with prompt-ensemble zero-shot weights (`ZeroShotClassification`).
* retrieval: a COCO-style captions file (``{"images": [{"id", "file_name"}], "annotations":
  [{"image_id", "caption"}]}``) with the images under a root folder (`ImageTextRetrieval`).
* vqa: the official VQAv2 annotation, question and results files (`vqa_corpus_accuracy`).
* captions: COCO captions references and a COCO results list ``[{"image_id", "caption"}]``
  (`caption_scores`): by default BLEU-1..4, ROUGE-L, CIDEr-D (pycocoevalcap's ``Cider``) and
  plain CIDEr (the paper's formula, without CIDEr-D's clipping and length penalty).

Image files are counted on a progress bar (images, rate, time left) while they are encoded. As in
`vlkit index` / `vlkit embed`, a file that cannot be read (truncated, not an image) is skipped with
a warning naming it; as skipping changes the benchmark, the run ends with a count and metrics.json
records it: "num_images" counts the images scored and "skipped_images" lists the skipped files
(retrieval also leaves out their captions: a caption without its image has no rank).
`--strict` stops at the first unreadable file instead, with nothing written.

This module defines the `eval` subcommands' parsers, reads the files
(`vlkit.evaluation.benchmark_files`), runs the evaluators and writes the outputs. Malformed input
raises a ValueError whose first line names the file and the key, which the CLI prints as one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vlkit.api import load_clip
from vlkit.cli.arguments import int_at_least, output_directory
from vlkit.cli.embed import warn_skipped
from vlkit.cli.errors import UsageError
from vlkit.distributed import resolve_device
from vlkit.evaluation import report
from vlkit.evaluation.benchmark_files import (
    image_folder,
    read_caption_results,
    read_coco_retrieval,
    read_vqa,
)
from vlkit.evaluation.caption_metrics import caption_scores
from vlkit.evaluation.embeddings import encode_images, encode_texts, image_file_batches
from vlkit.evaluation.evaluator import eval_mode
from vlkit.evaluation.modality_gap import modality_gap_metrics
from vlkit.evaluation.retrieval import ImageTextRetrieval, recall_curve, retrieval_ranks
from vlkit.evaluation.vqa import vqa_corpus_accuracy
from vlkit.evaluation.zero_shot import ZeroShotClassification, load_templates

DEFAULT_CAPTION_METRICS = ("bleu", "rouge_l", "cider_d", "cider_plain")
_RECALL = "per_class_recall/"


def add_eval_parser(commands: argparse._SubParsersAction) -> None:
    """Registers `eval` (zeroshot, retrieval, vqa, captions) on the `vlkit` command's subparsers."""
    ev = commands.add_parser("eval", help="evaluate on standard benchmark files, write a report")
    kinds = ev.add_subparsers(dest="eval_command", required=True)

    zs = kinds.add_parser("zeroshot", help="zero-shot classification of an ImageFolder tree")
    zs.add_argument("--model", required=True, help="checkpoint directory or hub id")
    zs.add_argument("--images", required=True, help="ROOT with one subfolder per class")
    zs.add_argument("--templates", default="openai-imagenet", help="openai-imagenet, cifar, FILE")

    rt = kinds.add_parser("retrieval", help="image-text retrieval on COCO-style captions")
    rt.add_argument("--model", required=True, help="checkpoint directory or hub id")
    rt.add_argument("--captions", required=True, help="COCO captions JSON (images + annotations)")
    rt.add_argument("--images", required=True, help="folder holding the images' file_name")
    rt.add_argument(
        "--max-k", type=int_at_least(1), default=10, help="Recall@K curve up to K (>= 1)"
    )

    vq = kinds.add_parser("vqa", help="official VQAv2 accuracy of a results file")
    vq.add_argument("--annotations", required=True, help="VQAv2 annotations JSON")
    vq.add_argument("--questions", required=True, help="VQAv2 questions JSON")
    vq.add_argument("--results", required=True, help="[{question_id, answer}, ...] JSON")

    cp = kinds.add_parser("captions", help="BLEU / ROUGE-L / CIDEr-D / CIDEr of COCO captions")
    cp.add_argument("--references", required=True, help="COCO captions JSON")
    cp.add_argument("--results", required=True, help="[{image_id, caption}, ...] JSON")
    cp.add_argument("--metrics", default=",".join(DEFAULT_CAPTION_METRICS),
                    help="comma-separated: bleu, rouge_l, cider_d (pycocoevalcap's Cider), "
                    "cider_plain (the paper's CIDEr), meteor, spice")  # fmt: skip
    cp.add_argument("--tokenizer", default="ptb", choices=["ptb", "ptb-java", "none"])
    cp.add_argument(
        "--allow-missing",
        action="store_true",
        help="score a results file that captions only some of the referenced images",
    )

    for sub in (zs, rt):
        sub.add_argument(
            "--batch-size", type=int_at_least(1), default=64, help="images per forward pass (>= 1)"
        )
        sub.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
        sub.add_argument(
            "--strict",
            action="store_true",
            help="stop at the first unreadable image (default: skip it with a warning naming it; "
            "metrics.json then lists it under skipped_images and num_images counts the images "
            "scored)",
        )
    for sub in (zs, rt, vq, cp):
        sub.add_argument("--out", required=True, help="output directory")


def eval_command(args: argparse.Namespace) -> dict[str, Any]:
    """Runs `vlkit eval KIND`; returns the metrics, NaN/inf as None (printed as strict JSON)."""
    output_directory(args.out, "--out")  # before any file is read or model loaded
    if args.eval_command in ("zeroshot", "retrieval"):
        args.device = str(resolve_device(args.device, "--device"))
    if args.eval_command == "zeroshot":
        metrics = eval_zeroshot(args.model, args.images, args.out, args.templates,
                                args.batch_size, args.device, strict=args.strict)  # fmt: skip
    elif args.eval_command == "retrieval":
        metrics = eval_retrieval(args.model, args.captions, args.images, args.out, args.max_k,
                                 args.batch_size, args.device, strict=args.strict)  # fmt: skip
    elif args.eval_command == "vqa":
        metrics = eval_vqa(args.annotations, args.questions, args.results, args.out)
    else:
        tokenizer = None if args.tokenizer == "none" else args.tokenizer
        metric_names = parse_metric_list(args.metrics)
        metrics = eval_captions(args.references, args.results, args.out, metric_names, tokenizer,
                                allow_missing=args.allow_missing)  # fmt: skip
    return report.json_safe(metrics)


def load_model(model_dir: str, device: str | None = None) -> tuple[Any, Any, Any]:
    """(model, tokenizer, transform) of a CLIP-like checkpoint, in eval mode on `device`."""
    model, tokenizer, transform = load_clip(model_dir)
    return model.to(resolve_device(device)), tokenizer, transform


class _ImageFiles:
    """Batches of image files on a tqdm bar (images, rate, ETA) that skip unreadable files (or,
    `strict`, raise at the first), warning as `vlkit index` / `embed` do and keeping the list."""

    def __init__(self, strict: bool, what: str) -> None:
        self.strict = strict
        self.what = what
        self.skipped: list[str] = []

    def batches(
        self, paths: Sequence[Any], transform: Any, batch_size: int, labels: Any = None
    ) -> Iterator[Any]:
        from tqdm.auto import tqdm

        with tqdm(total=len(paths), desc="encode images", unit="img") as bar:

            def on_skip(path: str, reason: str) -> None:
                self.skipped.append(path)
                warn_skipped(path, reason)
                bar.update(1)

            skip = None if self.strict else on_skip
            for batch in image_file_batches(paths, transform, batch_size, labels, skip):
                bar.update(len(batch[0] if isinstance(batch, tuple) else batch))
                yield batch
        if paths and len(self.skipped) == len(paths):
            raise ValueError(f"{self.what}: none of the {len(paths)} images could be read")

    def report(self, total: int) -> None:
        """Warns with the count when something was skipped."""
        if self.skipped:
            print(f"vlkit: warning: skipped {len(self.skipped)} unreadable image(s) of {total}: "
                  "the metrics cover the rest (metrics.json: skipped_images; --strict stops at "
                  "the first)", file=sys.stderr)  # fmt: skip


def _out_dir(out_dir: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def eval_zeroshot(
    model_dir: str,
    images_root: str,
    out_dir: str,
    templates: str = "openai-imagenet",
    batch_size: int = 64,
    device: str | None = None,
    strict: bool = False,
) -> dict[str, Any]:
    """Zero-shot classification of an ImageFolder tree; writes metrics.json, report.md, a plot.

    Args:
        strict: Raise at the first unreadable image instead of skipping it (see the module
            docstring).

    Returns:
        {"top1", "top5" (NaN with fewer than 5 classes), "mean_per_class_recall",
        "per_class_recall": {class: recall}, "num_images" (images scored), "num_classes",
        "templates", "skipped_images" (unreadable files left out), "modality_gap" (distance
        between the centroids of the unit image embeddings and of the class text weights)}.
    """
    paths, labels, names = image_folder(images_root, "--images")
    prompts = load_templates(templates)
    model, tokenizer, transform = load_model(model_dir, device)
    evaluator = ZeroShotClassification(tokenizer, names, prompts, per_class_recall=True)
    files = _ImageFiles(strict, f"--images {images_root}")
    predictions = evaluator.predict(model, files.batches(paths, transform, batch_size, labels))
    scores = evaluator.score(predictions)
    files.report(len(paths))
    metrics: dict[str, Any] = {k: v for k, v in scores.items() if not k.startswith(_RECALL)}
    # The modality gap between the images and the class text weights (Liang et al. 2022).
    gap = modality_gap_metrics(predictions.image_embeddings, predictions.classifier)
    metrics["modality_gap"] = gap["modality_gap"]
    metrics["per_class_recall"] = {name: scores[_RECALL + name] for name in names}
    metrics.update(num_images=len(paths) - len(files.skipped), num_classes=len(names),
                   templates=templates, skipped_images=files.skipped)  # fmt: skip

    out = _out_dir(out_dir)
    plot = "per_class_recall.png"
    report.bar_chart(metrics["per_class_recall"], out / plot, "Per-class recall", "recall")
    summary = {k: metrics[k] for k in ("top1", "top5", "mean_per_class_recall", "modality_gap",
                                       "num_images")}  # fmt: skip
    summary["skipped_images"] = len(files.skipped)
    sections = [("Summary", summary), ("Per-class recall", metrics["per_class_recall"])]
    report.write_report(out, "Zero-shot classification", metrics, sections, plot)
    return metrics


def eval_retrieval(
    model_dir: str,
    captions_file: str,
    images_root: str,
    out_dir: str,
    max_k: int = 10,
    batch_size: int = 64,
    device: str | None = None,
    strict: bool = False,
) -> dict[str, Any]:
    """Image<->text retrieval on a COCO-style captions file; writes metrics.json, report.md, a plot.

    The metrics equal `retrieval_metrics(image_emb, text_emb, ids)` with L2-normalised
    embeddings; the ranks are computed once and also give the Recall@K curve for K = 1..max_k.

    Args:
        strict: Raise at the first unreadable image instead of skipping it and its captions
            (see the module docstring).

    Returns:
        retrieval_metrics' keys, plus "recall_curve" {"k", "i2t", "t2i"}, "num_images" and
        "num_texts" (scored), "skipped_images" (unreadable files left out, with their captions),
        "modality_gap" (centroid distance of the unit image and caption embeddings, each image
        counted once) and "mean_paired_cosine" (of each caption with its image).
    """
    if max_k < 1:
        raise UsageError(f"--max-k must be at least 1, got {max_k}")
    names, captions, ids = read_coco_retrieval(captions_file, "--captions")
    model, tokenizer, transform = load_model(model_dir, device)
    evaluator = ImageTextRetrieval(tokenizer, batch_size=batch_size)
    paths = [str(Path(images_root) / name) for name in names]
    files = _ImageFiles(strict, f"--captions {captions_file}")
    # ImageTextRetrieval.predict's steps, with the captions of skipped images left out once the
    # images are encoded (the images are read once, lazily, batch by batch).
    with eval_mode(model):
        image_emb = encode_images(model, files.batches(paths, transform, batch_size))
        files.report(len(paths))
        skipped = set(files.skipped)
        new_index = {}  # old image index -> row of image_emb
        for i, path in enumerate(paths):
            if path not in skipped:
                new_index[i] = len(new_index)
        kept = [j for j, i in enumerate(ids) if i in new_index]
        captions = [captions[j] for j in kept]
        ids = [new_index[ids[j]] for j in kept]
        text_emb = encode_texts(model, tokenizer, captions, evaluator.text_batch_size)
    i2t, t2i = ranks = retrieval_ranks(image_emb, text_emb, ids)
    metrics: dict[str, Any] = evaluator.score(ranks)
    ks = list(range(1, max_k + 1))
    curve = {"i2t": recall_curve(i2t, ks), "t2i": recall_curve(t2i, ks)}
    gap = modality_gap_metrics(image_emb, text_emb, ids)  # Liang et al. 2022, each image once
    metrics.update(modality_gap=gap["modality_gap"], mean_paired_cosine=gap["mean_paired_cosine"])
    metrics.update(recall_curve={"k": ks, **curve}, num_images=len(new_index),
                   num_texts=len(captions), skipped_images=files.skipped)  # fmt: skip

    out = _out_dir(out_dir)
    plot = "recall_at_k.png"
    labels = {"image -> text": curve["i2t"], "text -> image": curve["t2i"]}
    report.recall_curve(ks, labels, out / plot, "Retrieval Recall@K")
    summary = {k: v for k, v in metrics.items() if k not in ("recall_curve", "skipped_images")}
    summary["skipped_images"] = len(files.skipped)
    report.write_report(out, "Image-text retrieval", metrics, [("Metrics", summary)], plot)
    return metrics


def eval_vqa(
    annotations_file: str, questions_file: str, results_file: str, out_dir: str
) -> dict[str, Any]:
    """Official VQAv2 accuracy of a results file; writes metrics.json, report.md, a plot.

    Returns:
        {"overall", "per_answer_type", "per_question_type", "num_questions"}: fractions in [0, 1]
        as `vqa_corpus_accuracy` returns them (the official report is 100x, 2 decimals).
    """
    predictions, annotations, qids = read_vqa(
        annotations_file,
        questions_file,
        results_file,
        ("--annotations", "--questions", "--results"),
    )
    scores = vqa_corpus_accuracy(predictions, annotations, question_ids=qids)
    metrics = {k: scores[k] for k in ("overall", "per_answer_type", "per_question_type")}
    metrics["num_questions"] = scores["num_questions"]

    out = _out_dir(out_dir)
    plot = "per_answer_type.png"
    report.bar_chart(metrics["per_answer_type"], out / plot, "VQA accuracy by answer type", "acc")
    sections = [
        ("Overall", {"overall": metrics["overall"], "num_questions": metrics["num_questions"]}),
        ("Per answer type", metrics["per_answer_type"]),
        ("Per question type", dict(sorted(metrics["per_question_type"].items()))),
    ]
    report.write_report(out, "VQAv2 accuracy", metrics, sections, plot)
    return metrics


def eval_captions(
    references_file: str,
    results_file: str,
    out_dir: str,
    metrics: Sequence[str] = DEFAULT_CAPTION_METRICS,
    tokenizer: str | None = "ptb",
    allow_missing: bool = False,
) -> dict[str, Any]:
    """COCO caption metrics of a results file; writes metrics.json, report.md, a CIDEr-D histogram.

    Args:
        allow_missing: Score a results file that captions only some of the referenced images
            (refused otherwise; see `read_caption_results`).

    Returns:
        caption_scores' corpus scores, plus "num_images".
    """
    references, candidates = read_caption_results(
        references_file,
        results_file,
        ("--references", "--results", "--allow-missing"),
        allow_missing=allow_missing,
    )
    scores = caption_scores(references, candidates, metrics, tokenizer=tokenizer, per_item=True)
    per_item = scores.pop("per_item")
    result: dict[str, Any] = {**scores, "num_images": len(candidates)}

    out = _out_dir(out_dir)
    plot = None
    if "cider_d" in scores:
        plot = "cider_d_histogram.png"
        values = [item["cider_d"] for item in per_item.values()]
        report.histogram(values, out / plot, "Per-image CIDEr-D", "CIDEr-D")
    report.write_report(out, "Caption metrics", result, [("Metrics", result)], plot)
    return result


def parse_metric_list(text: str) -> list[str]:
    """ "bleu,rouge_l" -> ["bleu", "rouge_l"]; empty items are dropped."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UsageError("--metrics is empty: give comma-separated metric names")
    return names


__all__ = [
    "add_eval_parser",
    "eval_captions",
    "eval_command",
    "eval_retrieval",
    "eval_vqa",
    "eval_zeroshot",
    "load_model",
    "parse_metric_list",
]
