"""`run_mmvet`: a generative VLM answers MM-Vet, an LLM judge grades the answers, the grades are
aggregated as the official MM-Vet evaluator does (`vlkit.evaluation.mmvet`).

    record = run_mmvet("HuggingFaceTB/SmolVLM-256M-Instruct", "data/mmvet", "out/mmvet",
                       judge="openai", runs=5)

The model sees each question as it is (the official inference scripts, github.com/yuweihao/MM-Vet
`inference/`, send `data[id]["question"]` with the image, nothing added) through the model's
chat template, answering greedily (`vlkit.inference.batch_generation.generate_batch`).

What `out_dir` holds (each file usable on its own):

* `predictions.jsonl`: the per-sample answer cache (`recipes/prediction_cache.py`); a run
  interrupted while generating resumes where it stopped.
* `predictions.json`: the official results file, {id: answer}, which `mm-vet_evaluator.py` reads.
* `judge_cache.jsonl`: every judge reply (`evaluation/judges.JudgeCache`).
* `grades-<judge>.json`: the official grade file, {id: {"model", "content", "score", "attempts"}}
  with one entry per run (score null: unparsed), saved after every grade.
* `scores.json`: per capability, per capability combination, total, std, runs, unparsed samples.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vlkit.data.benchmarks.mmvet import MMVetSet, read_mmvet
from vlkit.evaluation.judges import Judge, JudgeCache, judge_from_spec
from vlkit.evaluation.mmvet import MMVET_SOURCE, MMVetScores, aggregate_mmvet
from vlkit.evaluation.mmvet_grading import DEFAULT_RETRIES, grade_mmvet
from vlkit.inference.batch_generation import generate_batch
from vlkit.inference.vlm_loading import load_vlm
from vlkit.inference.vlm_pipeline import VLMPipeline
from vlkit.recipes.prediction_cache import PredictionCache

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "grades_file", "run_mmvet"]

# lmms-eval's MM-Vet task budget (lmms_eval/tasks/mmvet/mmvet.yaml): MM-Vet's "gen" answers
# are paragraphs.
DEFAULT_MAX_NEW_TOKENS = 1024


def grades_file(out_dir: str | Path, judge: Judge) -> Path:
    """The grade file of `judge` in `out_dir`: one per judge, so judges never mix."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", judge.identity)[:80]
    digest = hashlib.sha256(judge.identity.encode()).hexdigest()[:8]
    return Path(out_dir) / f"grades-{slug}-{digest}.json"


def _write_json(path: Path, obj: Any) -> None:
    """Written atomically (a killed run leaves the old file or the new one, never half)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(obj, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _answer(
    dataset: MMVetSet,
    cache: PredictionCache,
    pipeline: VLMPipeline,
    max_new_tokens: int,
    batch_size: int,
    progress: bool,
) -> None:
    """Generates the answers the cache lacks, a batch at a time, appended as they come."""
    pending = [i for i, sample in enumerate(dataset.samples) if sample.id not in cache]
    bar = tqdm(total=len(pending), desc="mmvet answers", unit="sample", disable=not progress)
    for start in range(0, len(pending), batch_size):
        batch = pending[start : start + batch_size]
        requests = [([dataset.load_image(i)], dataset[i].question) for i in batch]
        answers = generate_batch(pipeline, requests, max_new_tokens=max_new_tokens)
        cache.add((dataset[i].id, answer.strip()) for i, answer in zip(batch, answers, strict=True))
        bar.update(len(batch))
    bar.close()


def run_mmvet(
    model_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    judge: Judge | str,
    runs: int = 1,
    limit: int | None = None,
    *,
    device: str = "cpu",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 8,
    retries: int = DEFAULT_RETRIES,
    decimal_places: int = 1,
    pipeline: VLMPipeline | None = None,
    dataset: MMVetSet | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Answers, grades and scores MM-Vet (see the module docstring for what `out_dir` holds).

    Args:
        model_dir: The model (anything `vlkit.inference.vlm_loading.load_vlm` takes).
        data_dir: MM-Vet's directory (`mm-vet.json` + `images/`; `data.benchmarks.mmvet`).
        out_dir: Where predictions, judge replies, grades and scores go; a rerun continues
            from what is there (answers and judge replies are never asked for twice).
        judge: A `Judge`, or a spec for `judge_from_spec` ("openai", "openai:MODEL",
            "local:PATH").
        runs: Judge runs (the paper uses 5): the scores are their mean, `std` their spread.
        limit: Only the first `limit` samples.
        device: Where the model (and a local judge) runs.
        max_new_tokens: Answer budget.
        batch_size: Answers generated per batch.
        retries: Judge calls after an unparseable reply before it is recorded as unparsed.
        decimal_places: Rounding of the scores (official: 1).
        pipeline: An already loaded model (then `model_dir` only names it in the record).
        dataset: Already read MM-Vet samples (then `data_dir` and `limit` are not used).
        progress: tqdm bars (samples/s, ETA).

    Returns:
        A result record in CLIP_benchmark's schema: {"dataset": "mmvet", "model", "pretrained",
        "task": "mmvet", "metrics": `MMVetScores.metrics()`, "language": "en", "seconds",
        "samples", "judge"}.

    Raises:
        vlkit.errors.DatasetMissing: MM-Vet is not in `data_dir` (before any model is loaded).
        ValueError: A bad judge spec, runs < 1, an answer cache written by another model.
        vlkit.evaluation.judges.JudgeError: The judge endpoint failed past its retries.
    """
    started = time.perf_counter()
    if runs < 1:
        raise ValueError(f"runs={runs}: must be >= 1")
    dataset = dataset if dataset is not None else read_mmvet(data_dir, limit)
    judge = judge_from_spec(judge, device=device) if isinstance(judge, str) else judge
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    header = {"task": "mmvet", "model": str(model_dir), "prompt": "question as is",
              "max_new_tokens": max_new_tokens}  # fmt: skip
    cache = PredictionCache(out / "predictions.jsonl", header)
    if any(sample.id not in cache for sample in dataset.samples):
        pipeline = pipeline if pipeline is not None else load_vlm(model_dir, device=device)
        _answer(dataset, cache, pipeline, max_new_tokens, batch_size, progress)
    predictions = {sample.id: cache.get(sample.id) for sample in dataset.samples}
    _write_json(out / "predictions.json", predictions)

    grade_path = grades_file(out, judge)
    grades = json.loads(grade_path.read_text(encoding="utf-8")) if grade_path.is_file() else {}
    grade_mmvet(
        dataset.samples, predictions, judge, runs,
        cache=JudgeCache(out / "judge_cache.jsonl"), retries=retries, grades=grades,
        on_grade=lambda g: _write_json(grade_path, g), progress=progress,
    )  # fmt: skip
    scores = aggregate_mmvet(
        dataset.capabilities(),
        {sample.id: grades[sample.id]["score"][:runs] for sample in dataset.samples},
        decimal_places=decimal_places,
    )
    unparsed = [s.id for s in dataset.samples if None in grades[s.id]["score"][:runs]]
    if unparsed:
        warnings.warn(
            f"mmvet: {scores.unparsed} judge replies never parsed as a score (samples "
            f"{', '.join(unparsed[:5])}{', ...' if len(unparsed) > 5 else ''}); counted as 0.0 "
            f"as the official evaluator does, see {grade_path.name}",
            stacklevel=2,
        )
    _write_json(out / "scores.json", _scores_json(scores, judge, unparsed))
    return {
        "dataset": "mmvet",
        "model": Path(str(model_dir)).name,
        "pretrained": str(model_dir),
        "task": "mmvet",
        "metrics": scores.metrics(),
        "language": "en",
        "seconds": round(time.perf_counter() - started, 3),
        "samples": len(dataset),
        "judge": judge.identity,
    }


def _scores_json(scores: MMVetScores, judge: Judge, unparsed: list[str]) -> dict[str, Any]:
    return {
        "capabilities": scores.capabilities,
        "combinations": scores.combinations,
        "total": scores.total,
        "std": scores.std,
        "runs": scores.runs,
        "samples": scores.samples,
        "capability_counts": scores.capability_counts,
        "combination_counts": scores.combination_counts,
        "unparsed": scores.unparsed,
        "unparsed_samples": unparsed,
        "judge": judge.identity,
        "aggregation": MMVET_SOURCE,
    }
