"""MM-Vet (Yu et al. 2023, "MM-Vet: Evaluating Large Multimodal Models for Integrated
Capabilities"): the official LLM-grader prompt, the parsing of its reply into a score in [0, 1],
and the aggregation into per-capability, per-capability-combination and total scores.

Everything here reproduces the official evaluator, `mm-vet_evaluator.py` (and the identical
`mm-vet_evaluator.ipynb`) of github.com/yuweihao/MM-Vet at commit acde843 (Apache-2.0; the
grader prompt below is copied from it verbatim):

* The grader sees `GRADER_PROMPT + "\\n" + " | ".join([question, answer, prediction, ""])`, the
  answer's `<AND>` / `<OR>` padded with spaces, as one user message, `max_tokens=3`,
  temperature 0. A reply that does not parse is asked again with `RETRY_SUFFIX` appended, at
  temperatures 0.0, 0.5, 1.0, 1.5, 2.0 (`RETRY_TEMPERATURES`; the evaluator raises the
  temperature after each retry call). Grading lives in `mmvet_grading.py`.
* A reply parses as `float(reply.split(" ")[0].strip())` when that is in [0, 1].
* Per run r and per capability c: 100 * (sum of the scores of the samples that need c) / (their
  number); "total" likewise over all samples; a capability combination (the exact set of a
  sample's capabilities) likewise over its samples. The reported value is the mean over runs,
  `std` is numpy's (population) standard deviation of the runs' totals, `runs` the runs'
  totals; all rounded with numpy's rounding (`round` of a numpy float) to `decimal_places` (1).

Where vlkit differs, on purpose:

* An unparseable reply, after the retries, is recorded as unparsed (score None) and counted in
  `MMVetScores.unparsed`. The official script silently gives it 0.0 (and never parses the last
  retry's reply); the aggregate here also counts it as 0.0, so the numbers stay comparable, but
  the count is reported with them. A NaN reply ("nan" passes `float`) is unparsed here.
* A combination's name is its capabilities in `CAPABILITIES` order joined by "_" (the official
  name joins a Python `set`, whose order changes with the string hash seed between processes).
  Columns are ordered by sample count (descending; ties: `CAPABILITIES` order for capabilities,
  first appearance for combinations), as the official `Counter.most_common()` / `np.argsort`
  order them up to their tie-breaking.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CAPABILITIES",
    "GRADER_MAX_TOKENS",
    "GRADER_PROMPT",
    "MMVET_SOURCE",
    "OFFICIAL_JUDGE_MODEL",
    "RETRY_SUFFIX",
    "RETRY_TEMPERATURES",
    "MMVetScores",
    "aggregate_mmvet",
    "combination_name",
    "grader_prompt",
    "parse_score",
]

MMVET_SOURCE = (
    "https://github.com/yuweihao/MM-Vet/blob/acde843/mm-vet_evaluator.py "
    "(Yu et al. 2023, Apache-2.0)"
)
"""Where the grader prompt, the score parsing and the aggregation come from."""

# The six core capabilities, in the paper's order (Table 1: Rec, OCR, Know, Gen, Spat, Math).
CAPABILITIES = ("rec", "ocr", "know", "gen", "spat", "math")

OFFICIAL_JUDGE_MODEL = "gpt-4-0613"
"""The official evaluator's default grader (`--gpt_model`)."""

GRADER_MAX_TOKENS = 3
"""The official evaluator's `max_tokens` per grader call."""

# Temperature of the first call, then of each of the 5 retries (the evaluator calls a retry at the
# current temperature and only then adds 0.5: 0.0, 0.0, 0.5, 1.0, 1.5, 2.0).
RETRY_TEMPERATURES = (0.0, 0.0, 0.5, 1.0, 1.5, 2.0)

RETRY_SUFFIX = "\nPredict the correctness of the answer (digit): "
"""Appended to the grader prompt for a retry after an unparseable reply (official evaluator)."""

# Copied verbatim from MM-Vet's mm-vet_evaluator.py (`prompt`), github.com/yuweihao/MM-Vet,
# commit acde843, Apache License 2.0, (c) the MM-Vet authors (Weihao Yu et al.).
GRADER_PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""


def grader_prompt(question: str, answer: str, prediction: str, retry: bool = False) -> str:
    """The grader's user message for one sample, as the official evaluator builds it.

    Args:
        question: The MM-Vet question.
        answer: The ground truth (with `<AND>` / `<OR>`; they get a space on each side).
        prediction: The model's answer.
        retry: The retry prompt (after an unparseable reply): `RETRY_SUFFIX` appended.
    """
    answer = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    prompt = GRADER_PROMPT + "\n" + " | ".join([question, answer, prediction, ""])
    return prompt + RETRY_SUFFIX if retry else prompt


def parse_score(reply: str | None) -> float | None:
    """The score of a grader reply, or None when it does not parse.

    As the official evaluator: the reply's text up to its first space, stripped, read by
    `float`, accepted when in [0, 1] ("0.5", "1.0\\n", "0.7 because ..." parse; "Score: 0.5",
    "1.5", "" do not). NaN is refused (the official check lets it through).
    """
    if reply is None:
        return None
    try:
        score = float(reply.split(" ")[0].strip())
    except ValueError:
        return None
    if math.isnan(score) or not 0.0 <= score <= 1.0:
        return None
    return score


def combination_name(capabilities: Sequence[str]) -> str:
    """The column name of a capability combination: its distinct capabilities in
    `CAPABILITIES` order (unknown ones after, sorted) joined by "_", e.g. "ocr_spat_math"."""
    distinct = set(capabilities)
    known = [c for c in CAPABILITIES if c in distinct]
    return "_".join(known + sorted(distinct - set(CAPABILITIES)))


@dataclass
class MMVetScores:
    """Aggregated MM-Vet scores (percent, rounded as the official evaluator rounds them).

    Attributes:
        capabilities: {capability: mean over runs of its per-run score}, most samples first.
        combinations: {combination name: mean over runs}, most samples first.
        total: Mean over runs of the per-run total.
        std: Standard deviation (numpy's, ddof=0) of the runs' totals.
        runs: Each run's total.
        samples: Number of samples aggregated.
        unparsed: Number of (sample, run) grades whose replies never parsed (counted as 0.0).
        capability_counts: {capability: number of samples that need it}.
        combination_counts: {combination name: number of samples}.
    """

    capabilities: dict[str, float]
    combinations: dict[str, float]
    total: float
    std: float
    runs: list[float]
    samples: int
    unparsed: int = 0
    capability_counts: dict[str, int] = field(default_factory=dict)
    combination_counts: dict[str, int] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat metrics for a result record: "total", "std", one key per capability, one
        "combination/<name>" per combination, "unparsed" and "runs" (the number of runs)."""
        flat: dict[str, float] = {"total": self.total, "std": self.std}
        flat.update(self.capabilities)
        flat.update({f"combination/{name}": v for name, v in self.combinations.items()})
        flat["unparsed"] = float(self.unparsed)
        flat["runs"] = float(len(self.runs))
        return flat


def _round(value: np.floating | float, decimal_places: int) -> float:
    # The official script calls Python's `round` on numpy floats, which is numpy's rounding
    # (scale, round half to even, unscale): np.round(0.15, 1) == 0.2 where round(0.15, 1) == 0.1.
    return float(np.round(np.float64(value), decimal_places))


def aggregate_mmvet(
    capabilities: Mapping[str, Sequence[str]],
    scores: Mapping[str, Sequence[float | None]],
    decimal_places: int = 1,
) -> MMVetScores:
    """Per-capability, per-combination and total MM-Vet scores over one or more judge runs.

    Args:
        capabilities: {sample id: its capabilities} (mm-vet.json's "capability"), in the
            dataset's order; every sample here is aggregated.
        scores: {sample id: one score per run}; None is an unparsed grade, counted as 0.0 (as
            the official evaluator does) and in `unparsed`.
        decimal_places: Rounding of the reported numbers (the official default is 1).

    Raises:
        ValueError: A sample without scores, or samples with different numbers of runs.
    """
    ids = list(capabilities)
    if not ids:
        raise ValueError("no MM-Vet samples to aggregate")
    missing = [i for i in ids if i not in scores]
    if missing:
        raise ValueError(
            f"no judge scores for MM-Vet sample {missing[0]!r} ({len(missing)} missing)"
        )
    num_runs = {len(scores[i]) for i in ids}
    if len(num_runs) != 1 or 0 in num_runs:
        raise ValueError(f"MM-Vet samples have different numbers of judge runs: {sorted(num_runs)}")
    runs = num_runs.pop()

    capability_counts: dict[str, int] = {}
    combination_counts: dict[str, int] = {}
    for i in ids:
        for c in set(capabilities[i]):
            capability_counts[c] = capability_counts.get(c, 0) + 1
        name = combination_name(capabilities[i])
        combination_counts[name] = combination_counts.get(name, 0) + 1
    order = {c: k for k, c in enumerate(CAPABILITIES)}
    capability_columns = sorted(
        capability_counts, key=lambda c: (-capability_counts[c], order.get(c, len(order)), c)
    )
    combination_columns = sorted(combination_counts, key=lambda n: -combination_counts[n])

    # Per-run sums, accumulated in the dataset's order from 0.0 as the official loop does.
    capability_sums = {c: [0.0] * runs for c in capability_columns}
    combination_sums = {n: [0.0] * runs for n in combination_columns}
    total_sums = [0.0] * runs
    unparsed = 0
    for i in ids:
        name = combination_name(capabilities[i])
        for r in range(runs):
            score = scores[i][r]
            if score is None:
                unparsed += 1
                score = 0.0
            for c in set(capabilities[i]):
                capability_sums[c][r] += score
            combination_sums[name][r] += score
            total_sums[r] += score

    def percent(sums: list[float], count: int) -> np.ndarray:
        return np.array(sums) / count * 100  # the official order: divide, then scale

    totals = percent(total_sums, len(ids))
    return MMVetScores(
        capabilities={
            c: _round(percent(capability_sums[c], capability_counts[c]).mean(), decimal_places)
            for c in capability_columns
        },
        combinations={
            n: _round(np.mean(percent(combination_sums[n], combination_counts[n])), decimal_places)
            for n in combination_columns
        },
        total=_round(totals.mean(), decimal_places),
        std=_round(totals.std(), decimal_places),
        runs=[float(v) for v in np.round(totals, decimal_places)],
        samples=len(ids),
        unparsed=unparsed,
        capability_counts={c: capability_counts[c] for c in capability_columns},
        combination_counts={n: combination_counts[n] for n in combination_columns},
    )
