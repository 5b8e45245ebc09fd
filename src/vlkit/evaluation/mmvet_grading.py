"""MM-Vet grading: each sample's prediction scored by an LLM judge, run after run, as the official
evaluator does (github.com/yuweihao/MM-Vet `mm-vet_evaluator.py`, `runs()`; see `mmvet.py`).

For run j and each sample without a j-th score: ask the judge with the grader prompt (temperature
0, `GRADER_MAX_TOKENS`); while the reply does not parse, ask again with the retry prompt at the
next of `RETRY_TEMPERATURES`, at most `retries` times; a sample whose replies never parse is
recorded as unparsed (score None), never given a score. Replies go through a `JudgeCache`, so a
rerun asks the judge nothing it has answered before.

The grades have the official grade file's shape, {id: {"model": [...], "content": [...],
"score": [...]}} with one entry per run, plus "attempts" (judge calls per run); `content` is the
last reply, and `score` null for an unparsed grade.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from vlkit.data.benchmarks.mmvet import MMVetSample
from vlkit.evaluation.judges import Judge, JudgeCache
from vlkit.evaluation.mmvet import GRADER_MAX_TOKENS, grader_prompt, parse_score

__all__ = ["DEFAULT_RETRIES", "Grade", "grade_mmvet", "grade_sample", "retry_temperature"]

DEFAULT_RETRIES = 5
"""Retries after an unparseable reply (the official evaluator gives up after 5)."""


@dataclass(frozen=True)
class Grade:
    """One sample's grade in one run: `score` None when no reply parsed."""

    score: float | None
    content: str
    model: str
    attempts: int


def retry_temperature(attempt: int) -> float:
    """Temperature of call `attempt` (0: the first): 0.0, 0.0, 0.5, 1.0, ... (official
    `RETRY_TEMPERATURES`, continued by +0.5 for more retries)."""
    return 0.0 if attempt == 0 else 0.5 * (attempt - 1)


def grade_sample(
    judge: Judge,
    question: str,
    answer: str,
    prediction: str,
    *,
    run: int = 0,
    cache: JudgeCache | None = None,
    retries: int = DEFAULT_RETRIES,
    max_tokens: int = GRADER_MAX_TOKENS,
) -> Grade:
    """Grades one prediction (see the module docstring).

    Args:
        judge: The judge.
        question, answer, prediction: The sample's question, ground truth and model answer.
        run: The judge run (part of the cache key; seeds a local judge's sampling).
        cache: Reply cache (None: no caching).
        retries: Calls after an unparseable reply before giving up.
        max_tokens: Reply budget per call.
    """
    if retries < 0:
        raise ValueError(f"retries={retries}: must be >= 0")
    cache = cache if cache is not None else JudgeCache()
    reply = None
    for attempt in range(retries + 1):
        prompt = grader_prompt(question, answer, prediction, retry=attempt > 0)
        temperature = retry_temperature(attempt)
        key = cache.key(judge.identity, prompt, temperature, max_tokens, run)
        reply = cache.get(key)
        if reply is None:
            reply = judge.complete(
                prompt, temperature=temperature, max_tokens=max_tokens, seed=run * 1000 + attempt
            )
            cache.put(key, reply, {"run": run, "temperature": temperature})
        score = parse_score(reply.text)
        if score is not None:
            return Grade(score, reply.text, reply.model, attempt + 1)
    assert reply is not None
    return Grade(None, reply.text, reply.model, retries + 1)


def grade_mmvet(
    samples: Sequence[MMVetSample],
    predictions: Mapping[str, str],
    judge: Judge,
    runs: int = 1,
    *,
    cache: JudgeCache | None = None,
    retries: int = DEFAULT_RETRIES,
    max_tokens: int = GRADER_MAX_TOKENS,
    grades: dict[str, dict[str, list[Any]]] | None = None,
    on_grade: Callable[[dict[str, dict[str, list[Any]]]], None] | None = None,
    progress: bool = False,
) -> dict[str, dict[str, list[Any]]]:
    """Grades every sample `runs` times (runs already in `grades` are kept).

    Args:
        samples: The MM-Vet samples (id, question, answer).
        predictions: {sample id: the model's answer} (the official results file).
        judge: The judge.
        runs: Judge runs per sample (the paper uses 5).
        cache, retries, max_tokens: As `grade_sample`.
        grades: Earlier grades to continue (the official grade file's content); updated in place.
        on_grade: Called with the grades after each new grade (e.g. to save them).
        progress: A tqdm bar per run.

    Raises:
        ValueError: A sample without a prediction, or runs < 1.
    """
    if runs < 1:
        raise ValueError(f"runs={runs}: must be >= 1")
    missing = [s.id for s in samples if s.id not in predictions]
    if missing:
        raise ValueError(f"no prediction for MM-Vet sample {missing[0]!r} ({len(missing)} missing)")
    grades = {} if grades is None else grades
    for run in range(runs):
        todo = [s for s in samples if len(grades.get(s.id, {}).get("score", [])) <= run]
        bar = tqdm(todo, desc=f"mmvet judge run {run + 1}/{runs}", disable=not progress)
        for sample in bar:
            grade = grade_sample(
                judge, sample.question, sample.answer, predictions[sample.id],
                run=run, cache=cache, retries=retries, max_tokens=max_tokens,
            )  # fmt: skip
            entry = grades.setdefault(
                sample.id, {"model": [], "content": [], "score": [], "attempts": []}
            )
            for key, value in (
                ("model", grade.model), ("content", grade.content),
                ("score", grade.score), ("attempts", grade.attempts),
            ):  # fmt: skip
                entry.setdefault(key, []).append(value)
            if on_grade is not None:
                on_grade(grades)
    return grades
