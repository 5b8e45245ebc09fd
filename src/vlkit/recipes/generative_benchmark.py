"""Generative benchmark runs: VQAv2, TextVQA, GQA and COCO captions, end to end for any generative VLM.

`run_generative_task(model_dir, task, dataset, out_dir)` answers every sample of a
`vlkit.data.benchmarks.vqa_sets.GenerativeSet` with the model (batched, left-padded greedy
generation through the model's chat template: `vlkit.inference.batch_generation`), writes the
predictions in the benchmark's official submission format, and scores them with vlkit's metrics.

Prompts and budgets are lmms-eval's (EvolvingLMMs-Lab/lmms-eval, `lmms_eval/tasks/`):

* vqav2 (`vqav2/_default_template_vqav2_yaml`, `utils.vqav2_doc_to_text`):
  `{question}` + "\\nAnswer the question using a single word or phrase.", 16 new tokens.
* textvqa (`textvqa/_default_template_textvqa_yaml`, `utils.textvqa_doc_to_text`):
  `question.capitalize()` (Python's: the rest lower-cased) + the same post-prompt (no OCR tokens).
* gqa (`gqa/gqa.yaml`): `{question}` + the same post-prompt, 16 new tokens, greedy.
* coco_caption (`coco_cap/coco_karpathy_test.yaml`): "Describe the image briefly.", 64 tokens.

Scores (fractions in [0, 1]; predictions are stripped of surrounding whitespace, as lmms-eval's
model wrappers do):

* vqav2: `vqa_accuracy`, the official VQAv2 accuracy (`vlkit.evaluation.vqa.vqa_corpus_accuracy`,
  vqaEval.py's normalisation), overall and per answer type (`vqa_accuracy_yes_no`, `_number`,
  `_other`); `vqa_accuracy_lmms_eval`, the same with lmms-eval's always-normalised prediction
  (`always_normalize=True`), which is what lmms-eval and the EvalAI server report for chat models.
* textvqa: `vqa_accuracy` as TextVQA's evaluator (M4C `TextVQAAccuracyEvaluator`, lmms-eval
  `textvqa_process_results`): prediction and all human answers through EvalAI's answer processor,
  then min(1, matches among the other 9 / 3) averaged over the 10 leave-one-out subsets.
* gqa: `exact_match` as lmms-eval's gqa.yaml (`exact_match` with ignore_case and
  ignore_punctuation: lower-case, `string.punctuation` deleted).
* coco_caption: `bleu_1`..`bleu_4`, `rouge_l`, `cider_d` (`vlkit.evaluation.caption_metrics`, equal
  to pycocoevalcap with its PTB tokenisation).

Files under `out_dir/<task>/`: `cache.jsonl` (per-sample predictions, appended as the run goes:
an interrupted run resumes where it stopped, `prediction_cache.py`) and the submission file of
`TASKS[task].submission`.
"""

from __future__ import annotations

import json
import statistics
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlkit.data.benchmarks.vqa_sets import GenerativeSample, GenerativeSet
from vlkit.evaluation.caption_metrics import caption_scores
from vlkit.evaluation.vqa import normalize_vqa_answer, vqa_corpus_accuracy
from vlkit.inference import batch_generation
from vlkit.inference.vlm_loading import load_vlm
from vlkit.inference.vlm_pipeline import VLMPipeline
from vlkit.recipes.prediction_cache import PredictionCache

__all__ = [
    "GENERATIVE_TASKS",
    "TASKS",
    "GenerativeTask",
    "evalai_answer",
    "gqa_exact_match",
    "run_generative_task",
    "score_predictions",
    "textvqa_accuracy",
]

VQA_POST_PROMPT = "\nAnswer the question using a single word or phrase."
CAPTION_PROMPT = "Describe the image briefly."


@dataclass(frozen=True)
class GenerativeTask:
    """How one benchmark is asked, submitted and scored.

    Attributes:
        name: The task name ("vqav2", ...).
        kind: "vqa" or "caption" (the record's `task`).
        prompt: The user prompt of a sample.
        prompt_template: `prompt`'s description for the cache header and the record.
        max_new_tokens: Default generation budget.
        submission: The submission file's name.
        submission_row: (sample, prediction) -> one record of the official results format.
    """

    name: str
    kind: str
    prompt: Callable[[GenerativeSample], str]
    prompt_template: str
    max_new_tokens: int
    submission: str
    submission_row: Callable[[GenerativeSample, str], dict[str, Any]]


def _vqa_row(sample: GenerativeSample, prediction: str) -> dict[str, Any]:
    return {"question_id": sample.id, "answer": prediction}  # VQAv2 / TextVQA (EvalAI) results


TASKS: dict[str, GenerativeTask] = {
    "vqav2": GenerativeTask(
        "vqav2", "vqa", lambda s: f"{s.question}{VQA_POST_PROMPT}",
        "{question}" + VQA_POST_PROMPT, 16,
        "v2_OpenEnded_mscoco_val2014_vlkit_results.json", _vqa_row,
    ),
    "textvqa": GenerativeTask(
        "textvqa", "vqa", lambda s: f"{str(s.question).capitalize()}{VQA_POST_PROMPT}",
        "{question.capitalize()}" + VQA_POST_PROMPT, 16,
        "textvqa_val_vlkit_results.json", _vqa_row,
    ),
    "gqa": GenerativeTask(
        "gqa", "vqa", lambda s: f"{s.question}{VQA_POST_PROMPT}",
        "{question}" + VQA_POST_PROMPT, 16, "gqa_testdev_balanced_predictions.json",
        lambda s, p: {"questionId": s.id, "prediction": p},  # GQA's submission format
    ),
    "coco_caption": GenerativeTask(
        "coco_caption", "caption", lambda s: CAPTION_PROMPT, CAPTION_PROMPT, 64,
        "captions_karpathy_test_vlkit_results.json",
        lambda s, p: {"image_id": s.id, "caption": p},  # COCO caption results format
    ),
}  # fmt: skip
GENERATIVE_TASKS = tuple(TASKS)


def evalai_answer(text: str) -> str:
    """EvalAI's answer processor (MMF `EvalAIAnswerProcessor`, used by TextVQA's evaluator and
    lmms-eval): lower-case, drop "," and "?", "'s" -> " 's", then the official VQA normalisation."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_vqa_answer(text)


def textvqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """TextVQA accuracy of one prediction (lmms-eval `textvqa_process_results`): everything
    EvalAI-normalised, mean over annotators of min(1, matches among the others / 3)."""
    predicted = evalai_answer(prediction)
    normalised = [evalai_answer(answer) for answer in answers]
    scores = []
    for i in range(len(normalised)):
        others = normalised[:i] + normalised[i + 1 :]
        scores.append(min(1, float(sum(a == predicted for a in others)) / 3))
    return statistics.mean(scores)


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def gqa_exact_match(prediction: str, answer: str) -> float:
    """1.0 when equal after lower-casing and deleting `string.punctuation` (lmms-eval's gqa.yaml:
    `exact_match`, ignore_case, ignore_punctuation), else 0.0."""
    return float(
        prediction.lower().translate(_NO_PUNCTUATION) == answer.lower().translate(_NO_PUNCTUATION)
    )


def score_predictions(
    task: str, samples: Sequence[GenerativeSample], predictions: Sequence[str]
) -> dict[str, float]:
    """The task's metrics of `predictions` (one per sample, in order); see the module docstring."""
    if task == "vqav2":
        annotations = [
            {
                "question_id": s.id,
                "question_type": s.info.get("question_type", "unknown"),
                "answer_type": s.info.get("answer_type", "unknown"),
                "answers": list(s.answers),
            }
            for s in samples
        ]
        by_id = {s.id: p for s, p in zip(samples, predictions, strict=True)}
        official = vqa_corpus_accuracy(by_id, annotations)
        lenient = vqa_corpus_accuracy(by_id, annotations, always_normalize=True)
        metrics = {"vqa_accuracy": official["overall"]}
        for answer_type, value in sorted(official["per_answer_type"].items()):
            metrics["vqa_accuracy_" + answer_type.replace("/", "_")] = value
        metrics["vqa_accuracy_lmms_eval"] = lenient["overall"]
        return metrics
    if task == "textvqa":
        scores = [textvqa_accuracy(p, s.answers) for s, p in zip(samples, predictions, strict=True)]
        return {"vqa_accuracy": sum(scores) / len(scores)}
    if task == "gqa":
        hits = [gqa_exact_match(p, s.answers[0]) for s, p in zip(samples, predictions, strict=True)]
        return {"exact_match": sum(hits) / len(hits)}
    if task == "coco_caption":
        references = {s.id: list(s.answers) for s in samples}
        candidates = {s.id: p for s, p in zip(samples, predictions, strict=True)}
        return caption_scores(references, candidates, ("bleu", "rouge_l", "cider_d"))
    raise ValueError(f"unknown generative task {task!r}; choose from {', '.join(GENERATIVE_TASKS)}")


def _write_json(path: Path, data: Any) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data), encoding="utf-8")
    temporary.replace(path)


def run_generative_task(
    model_dir: str | Path,
    task: str,
    dataset: GenerativeSet,
    out_dir: str | Path,
    limit: int | None = None,
    batch_size: int = 8,
    *,
    device: str = "cpu",
    max_new_tokens: int | None = None,
    pipeline: VLMPipeline | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Answers, submits and scores one generative benchmark; resumes from `out_dir`'s cache.

    Args:
        model_dir: Anything `vlkit.inference.vlm_loading.load_vlm` accepts (SmolVLM / Idefics3,
            LLaVA, a `vlkit train-vlm` run, a peft adapter directory, a hub id).
        task: One of `GENERATIVE_TASKS`.
        dataset: The task's samples (`vlkit.data.benchmarks.vqa_sets.DATASETS[task](root)`).
        out_dir: The run's output directory; the task's files go to `out_dir/<task>/`.
        limit: Answer only the first N samples.
        batch_size: Samples generated together (left-padded).
        device: Where the model runs (when `pipeline` is not given).
        max_new_tokens: Generation budget; default the task's (16 for VQA, 64 for captions).
        pipeline: An already loaded `load_vlm(model_dir)`, to share one model across tasks.
        progress: Show a tqdm bar (samples, samples/s, ETA) on stderr.

    Returns:
        A CLIP_benchmark-style record: {"dataset": task, "model": the model kind, "pretrained":
        model_dir, "task": "vqa" | "caption", "metrics": {...}, "language": "en", "seconds",
        "samples"} plus "submission" (its path), "resumed" (samples taken from the cache),
        "prompt" and "max_new_tokens".

    Raises:
        ValueError: An unknown task, a bad `limit` / `batch_size`, or a cache written for another
            model / prompt / budget (one line).
    """
    from tqdm.auto import tqdm

    if task not in TASKS:
        raise ValueError(
            f"unknown generative task {task!r}; choose from {', '.join(GENERATIVE_TASKS)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit}: must be >= 1")
    spec = TASKS[task]
    budget = spec.max_new_tokens if max_new_tokens is None else max_new_tokens
    start = time.perf_counter()
    samples = list(dataset.samples[:limit] if limit is not None else dataset.samples)
    directory = Path(out_dir) / task
    header = {"task": task, "model": str(model_dir), "prompt": spec.prompt_template,
              "max_new_tokens": budget}  # fmt: skip
    cache = PredictionCache(directory / "cache.jsonl", header)
    todo = [i for i, sample in enumerate(samples) if sample.id not in cache]
    resumed = len(samples) - len(todo)
    if pipeline is None:
        pipeline = load_vlm(model_dir, device=device)
    with tqdm(total=len(samples), initial=resumed, desc=task, unit="sample",
              disable=not progress) as bar:  # fmt: skip
        for begin in range(0, len(todo), batch_size):
            chunk = todo[begin : begin + batch_size]
            requests = [([dataset.load_image(i)], spec.prompt(samples[i])) for i in chunk]
            answers = batch_generation.generate_batch(pipeline, requests, budget)
            cache.add(
                (samples[i].id, answer.strip()) for i, answer in zip(chunk, answers, strict=True)
            )
            bar.update(len(chunk))
    predictions = [cache.get(sample.id) for sample in samples]
    submission = directory / spec.submission
    _write_json(
        submission,
        [spec.submission_row(s, p) for s, p in zip(samples, predictions, strict=True)],
    )
    metrics = score_predictions(task, samples, predictions)
    return {
        "dataset": task,
        "model": pipeline.kind,
        "pretrained": str(model_dir),
        "task": spec.kind,
        "metrics": metrics,
        "language": "en",
        "seconds": time.perf_counter() - start,
        "samples": len(samples),
        "submission": str(submission),
        "resumed": resumed,
        "prompt": spec.prompt_template,
        "max_new_tokens": budget,
    }
