"""`vlkit eval ...`: standard benchmarks from files on disk, to metrics.json + report.md + a plot.

* zeroshot: an ImageFolder tree (one subfolder per class, class name = folder name with "_" ->
  " ") classified with prompt-ensemble zero-shot weights.
* retrieval: a COCO-style captions file (``{"images": [{"id", "file_name"}], "annotations":
  [{"image_id", "caption"}]}``) with the images under a root folder.
* vqa: the official VQAv2 annotation, question and results files.
* captions: COCO captions references and a COCO results list ``[{"image_id", "caption"}]``.

Malformed input (a missing file, invalid JSON, a missing key, an id that does not resolve) raises
a ValueError whose first line names the file and the key, which the CLI prints as one line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vlkit.evaluation import (
    build_zero_shot_classifier,
    caption_scores,
    classification_metrics,
    load_templates,
    report,
    retrieval_ranks,
    summarize_ranks,
    vqa_corpus_accuracy,
)
from vlkit.inference.image_search import IMAGE_SUFFIXES

DEFAULT_CAPTION_METRICS = ("bleu", "rouge_l", "cider_d")


# ---------------------------------------------------------------------------------------------
# Reading input files
# ---------------------------------------------------------------------------------------------


def read_json(path: str | Path, what: str) -> Any:
    """Parses a JSON file; a missing or invalid file is a ValueError naming it.

    Args:
        path: The file.
        what: The option it came from (e.g. "--captions"), for the message.
    """
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{what} {file}: no such file")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} {file}: not valid JSON ({error})") from None


def require(obj: Any, key: str, file: str | Path, where: str = "top level") -> Any:
    """`obj[key]`, or a ValueError naming the file, the key and where it was expected."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{file}: expected a JSON object at {where}, got {type(obj).__name__}")
    if key not in obj:
        raise ValueError(f"{file}: missing key {key!r} in {where}")
    return obj[key]


def require_list(obj: Any, key: str, file: str | Path) -> list:
    """`obj[key]` checked to be a JSON list."""
    value = require(obj, key, file)
    if not isinstance(value, list):
        raise ValueError(f"{file}: key {key!r} must be a list, got {type(value).__name__}")
    return value


def _records(items: Iterable[Any], keys: Sequence[str], file: Path, name: str) -> list[tuple]:
    """The `keys` of every record of a list, as tuples; names the first record lacking one."""
    return [
        tuple(require(item, k, file, f"{name}[{i}]") for k in keys) for i, item in enumerate(items)
    ]


# ---------------------------------------------------------------------------------------------
# Model helpers
# ---------------------------------------------------------------------------------------------


def _resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(model_dir: str, device: str | None = None) -> tuple[Any, Any, Any]:
    """(model, tokenizer, transform) of a checkpoint, the model in eval mode on `device`."""
    from vlkit.api import get_tokenizer, get_transform
    from vlkit.hub import from_pretrained

    model = from_pretrained(model_dir).to(_resolve_device(device)).eval()
    tokenizer = get_tokenizer(model_dir, context_length=model.config.text.context_length)
    return model, tokenizer, get_transform(model)


@torch.no_grad()
def encode_images(
    model: Any, transform: Callable, paths: Sequence[Path], batch_size: int = 64
) -> torch.Tensor:
    """L2-normalised float32 CPU embeddings (N, D) of image files, loaded batch by batch.

    Only one batch of decoded images is in memory at a time (datasets can be large).
    """
    from vlkit.data.images import load_image

    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(paths), batch_size):
        pixels = torch.stack([transform(load_image(p)) for p in paths[start : start + batch_size]])
        chunks.append(model.encode_image(pixels.to(device), normalize=True).float().cpu())
    return torch.cat(chunks)


@torch.no_grad()
def encode_texts(model: Any, tokenizer: Callable, texts: Sequence[str], batch_size: int = 256):
    """L2-normalised float32 CPU embeddings (N, D) of texts."""
    device = next(model.parameters()).device
    chunks = [
        model.encode_text(tokenizer(list(texts[s : s + batch_size])).to(device), normalize=True)
        .float()
        .cpu()
        for s in range(0, len(texts), batch_size)
    ]
    return torch.cat(chunks)


# ---------------------------------------------------------------------------------------------
# zeroshot
# ---------------------------------------------------------------------------------------------


def image_folder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """Image paths, class indices and class names of an ImageFolder tree.

    Classes are the subfolders sorted by name (torchvision's order); the class name is the folder
    name with "_" replaced by " ". Images are the files with an image suffix, searched
    recursively inside each class folder.
    """
    directory = Path(root)
    if not directory.is_dir():
        raise ValueError(f"--images {directory}: not a directory")
    folders = sorted(p for p in directory.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"--images {directory}: no class subfolders (ImageFolder layout)")
    paths, labels = [], []
    for index, folder in enumerate(folders):
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            # An empty class would have an undefined recall: refuse rather than skew the mean.
            raise ValueError(f"--images {directory}: class folder {folder.name!r} has no images")
        paths += files
        labels += [index] * len(files)
    return paths, labels, [f.name.replace("_", " ") for f in folders]


def per_class_recall(logits: torch.Tensor, labels: torch.Tensor, names: Sequence[str]) -> dict:
    """{class name: top-1 recall} for every class."""
    predicted = logits.argmax(dim=1)
    return {
        name: (predicted[labels == c] == c).float().mean().item() for c, name in enumerate(names)
    }


def eval_zeroshot(
    model_dir: str,
    images_root: str,
    out_dir: str,
    templates: str = "openai-imagenet",
    batch_size: int = 64,
    device: str | None = None,
) -> dict[str, Any]:
    """Zero-shot classification of an ImageFolder tree; writes metrics.json, report.md, a plot.

    The logits and summary metrics are those of `vlkit.evaluation.zero_shot` (same classifier,
    same `classification_metrics`); computing the logits here also gives the per-class recall.

    Returns:
        {"top1", "top5" (NaN with fewer than 5 classes), "mean_per_class_recall",
        "per_class_recall": {class: recall}, "num_images", "num_classes", "templates"}.
    """
    paths, labels, names = image_folder(images_root)
    prompts = load_templates(templates)
    model, tokenizer, transform = load_model(model_dir, device)
    classifier = build_zero_shot_classifier(model, tokenizer, names, prompts).float().cpu()
    logits = encode_images(model, transform, paths, batch_size) @ classifier.T
    target = torch.tensor(labels)
    metrics: dict[str, Any] = classification_metrics(logits, target)
    metrics["per_class_recall"] = per_class_recall(logits, target, names)
    metrics.update(num_images=len(paths), num_classes=len(names), templates=templates)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot = "per_class_recall.png"
    report.bar_chart(metrics["per_class_recall"], out / plot, "Per-class recall", "recall")
    summary = {k: metrics[k] for k in ("top1", "top5", "mean_per_class_recall", "num_images")}
    sections = [("Summary", summary), ("Per-class recall", metrics["per_class_recall"])]
    report.write_report(out, "Zero-shot classification", metrics, sections, plot)
    return metrics


# ---------------------------------------------------------------------------------------------
# retrieval
# ---------------------------------------------------------------------------------------------


def read_coco_captions(path: str | Path, what: str) -> tuple[list[tuple], list[tuple]]:
    """(images [(id, file_name)], captions [(image_id, caption)]) of a COCO captions file.

    Caption image ids must name an image of the file's "images" list.
    """
    data = read_json(path, what)
    file = Path(path)
    images = _records(require_list(data, "images", file), ("id", "file_name"), file, "images")
    captions = _records(
        require_list(data, "annotations", file), ("image_id", "caption"), file, "annotations"
    )
    known = {image_id for image_id, _ in images}
    unknown = [image_id for image_id, _ in captions if image_id not in known]
    if unknown:
        raise ValueError(
            f"{file}: annotations 'image_id' {unknown[0]!r} is not an 'id' in 'images' "
            f"({len(unknown)} captions affected)"
        )
    return images, captions


def eval_retrieval(
    model_dir: str,
    captions_file: str,
    images_root: str,
    out_dir: str,
    max_k: int = 10,
    batch_size: int = 64,
    device: str | None = None,
) -> dict[str, Any]:
    """Image<->text retrieval on a COCO-style captions file; writes metrics.json, report.md, a plot.

    The metrics equal `retrieval_metrics(image_emb, text_emb, ids)` with L2-normalised
    embeddings; the ranks are computed once and also give the Recall@K curve for K = 1..max_k.

    Returns:
        retrieval_metrics' keys, plus "recall_curve" {"k", "i2t", "t2i"}, "num_images",
        "num_texts".
    """
    if max_k < 1:
        raise ValueError(f"--max-k must be at least 1, got {max_k}")
    images, captions = read_coco_captions(captions_file, "--captions")
    if not images or not captions:
        raise ValueError(f"--captions {captions_file}: needs at least one image and one caption")
    index = {image_id: i for i, (image_id, _) in enumerate(images)}
    without = len(images) - len({image_id for image_id, _ in captions})
    if without:
        raise ValueError(
            f"{captions_file}: {without} entries of 'images' have no caption in 'annotations'"
        )
    root = Path(images_root)
    model, tokenizer, transform = load_model(model_dir, device)
    image_emb = encode_images(model, transform, [root / name for _, name in images], batch_size)
    text_emb = encode_texts(model, tokenizer, [str(caption) for _, caption in captions])
    ids = torch.tensor([index[image_id] for image_id, _ in captions])
    i2t, t2i = retrieval_ranks(image_emb, text_emb, ids)

    # Same assembly as retrieval_metrics, so the numbers are identical to it.
    metrics: dict[str, Any] = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for key, value in summarize_ranks(ranks, (1, 5, 10)).items():
            metrics[f"{name}_{key}"] = value
    ks = list(range(1, max_k + 1))
    curve = {
        name: [float((r <= k).float().mean()) for k in ks]
        for name, r in [("i2t", i2t), ("t2i", t2i)]
    }
    metrics.update(recall_curve={"k": ks, **curve}, num_images=len(images), num_texts=len(captions))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot = "recall_at_k.png"
    labels = {"image -> text": curve["i2t"], "text -> image": curve["t2i"]}
    report.recall_curve(ks, labels, out / plot, "Retrieval Recall@K")
    summary = {k: v for k, v in metrics.items() if k != "recall_curve"}
    report.write_report(out, "Image-text retrieval", metrics, [("Metrics", summary)], plot)
    return metrics


# ---------------------------------------------------------------------------------------------
# vqa
# ---------------------------------------------------------------------------------------------


def _read_results(path: str | Path, key: str, value: str, duplicate: str) -> dict[Any, str]:
    """{record[key]: record[value]} of a results list (VQAv2 or COCO captions); a repeated key
    is an error ending in `duplicate`, as the official loaders reject it too."""
    file = Path(path)
    data = read_json(file, "--results")
    if not isinstance(data, list):
        raise ValueError(f"--results {file}: expected a JSON list of {{{key}, {value}}}")
    results: dict[Any, str] = {}
    for record_key, record_value in _records(data, (key, value), file, "results"):
        if record_key in results:
            raise ValueError(f"{file}: {key!r} {record_key!r} {duplicate}")
        results[record_key] = record_value
    return results


def _read_vqa_results(path: str | Path) -> dict[Any, str]:
    """{question_id: answer} of a VQAv2 results list; duplicates are an error, as in loadRes."""
    return _read_results(path, "question_id", "answer", "appears twice")


def _check_vqa_annotations(items: list, file: Path) -> None:
    keys = ("question_id", "question_type", "answer_type", "answers")
    for i, (_, _, _, answers) in enumerate(_records(items, keys, file, "annotations")):
        if not isinstance(answers, list) or not answers:
            raise ValueError(f"{file}: key 'answers' of annotations[{i}] must be a non-empty list")
        for j, answer in enumerate(answers):
            if isinstance(answer, Mapping):
                require(answer, "answer", file, f"annotations[{i}].answers[{j}]")


def eval_vqa(
    annotations_file: str, questions_file: str, results_file: str, out_dir: str
) -> dict[str, Any]:
    """Official VQAv2 accuracy of a results file; writes metrics.json, report.md, a plot.

    The questions scored are those of the questions file. As in the official `loadRes`, the
    results must answer exactly those questions: a missing or extra answer is an error.

    Returns:
        {"overall", "per_answer_type", "per_question_type", "num_questions"}: fractions in [0, 1]
        as `vqa_corpus_accuracy` returns them (the official report is 100x, 2 decimals).
    """
    ann_file, q_file, res_file = Path(annotations_file), Path(questions_file), Path(results_file)
    annotations = require_list(read_json(ann_file, "--annotations"), "annotations", ann_file)
    _check_vqa_annotations(annotations, ann_file)
    questions = require_list(read_json(q_file, "--questions"), "questions", q_file)
    qids = [qid for (qid,) in _records(questions, ("question_id",), q_file, "questions")]
    annotated = {ann["question_id"] for ann in annotations}
    _check_same_ids(qids, annotated, q_file, "has no annotation in " + str(ann_file))
    predictions = _read_vqa_results(res_file)
    _check_same_ids(qids, set(predictions), res_file, "has no answer")
    extra = set(predictions) - set(qids)
    if extra:
        raise ValueError(
            f"{res_file}: 'question_id' {next(iter(extra))!r} is not in {q_file} "
            f"({len(extra)} answers affected)"
        )

    scores = vqa_corpus_accuracy(predictions, annotations, question_ids=qids)
    metrics = {k: scores[k] for k in ("overall", "per_answer_type", "per_question_type")}
    metrics["num_questions"] = scores["num_questions"]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot = "per_answer_type.png"
    report.bar_chart(metrics["per_answer_type"], out / plot, "VQA accuracy by answer type", "acc")
    sections = [
        ("Overall", {"overall": metrics["overall"], "num_questions": metrics["num_questions"]}),
        ("Per answer type", metrics["per_answer_type"]),
        ("Per question type", dict(sorted(metrics["per_question_type"].items()))),
    ]
    report.write_report(out, "VQAv2 accuracy", metrics, sections, plot)
    return metrics


def _check_same_ids(qids: Sequence[Any], present: set, file: Path, problem: str) -> None:
    """Raises when a question id of `qids` is not in `present`, naming `file` and the first id."""
    missing = [qid for qid in qids if qid not in present]
    if missing:
        raise ValueError(
            f"{file}: 'question_id' {missing[0]!r} {problem} ({len(missing)} questions affected)"
        )


# ---------------------------------------------------------------------------------------------
# captions
# ---------------------------------------------------------------------------------------------


def _read_caption_results(path: str | Path) -> dict[Any, str]:
    """{image_id: caption} of a COCO captioning results list; one caption per image, since
    CIDEr-D scores exactly one candidate per image (pycocoevalcap asserts it)."""
    return _read_results(path, "image_id", "caption", "has more than one caption")


def eval_captions(
    references_file: str,
    results_file: str,
    out_dir: str,
    metrics: Sequence[str] = DEFAULT_CAPTION_METRICS,
    tokenizer: str | None = "ptb",
) -> dict[str, Any]:
    """COCO caption metrics of a results file; writes metrics.json, report.md, a CIDEr-D histogram.

    The images scored are those of the results file, as in COCOEvalCap with
    ``params["image_id"] = cocoRes.getImgIds()``; each needs references.

    Returns:
        caption_scores' corpus scores, plus "num_images".
    """
    ref_file = Path(references_file)
    data = read_json(ref_file, "--references")
    references: dict[Any, list[str]] = {}
    pairs = _records(
        require_list(data, "annotations", ref_file),
        ("image_id", "caption"),
        ref_file,
        "annotations",
    )
    for image_id, caption in pairs:
        references.setdefault(image_id, []).append(caption)
    candidates = _read_caption_results(results_file)
    if not candidates:
        raise ValueError(f"--results {results_file}: no captions")
    unknown = [image_id for image_id in candidates if image_id not in references]
    if unknown:
        raise ValueError(
            f"{results_file}: 'image_id' {unknown[0]!r} has no caption in {ref_file} "
            f"({len(unknown)} images affected)"
        )
    refs = {image_id: references[image_id] for image_id in candidates}
    scores = caption_scores(refs, candidates, metrics, tokenizer=tokenizer, per_item=True)
    per_item = scores.pop("per_item")
    result: dict[str, Any] = {**scores, "num_images": len(candidates)}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
        raise ValueError("--metrics is empty: give comma-separated metric names")
    return names


__all__ = [
    "eval_captions",
    "eval_retrieval",
    "eval_vqa",
    "eval_zeroshot",
    "image_folder",
    "parse_metric_list",
    "read_coco_captions",
    "read_json",
    "require",
]
