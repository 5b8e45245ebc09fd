"""Captioning metrics identical to pycocoevalcap: BLEU-1..4, ROUGE-L, CIDEr-D (pure Python/numpy),
METEOR and SPICE (pycocoevalcap's Java jars), with a fast pure-Python PTB tokenizer.

Example:
    >>> refs = {1: ["A dog runs on the grass.", "A brown dog running."], 2: ["Two cats sleep."]}
    >>> cands = {1: "a dog is running on grass", 2: "two cats are sleeping"}
    >>> scores = caption_scores(refs, cands)
    >>> sorted(scores)
    ['bleu_1', 'bleu_2', 'bleu_3', 'bleu_4', 'cider_d', 'rouge_l']

The numbers are those of pycocoevalcap's ``Bleu(4)``, ``Rouge()``, ``Cider()`` (which is CIDEr-D),
``Meteor()`` and ``Spice()`` ``compute_score`` on the same tokenized captions; see the modules
:mod:`.bleu`, :mod:`.rouge`, :mod:`.cider`, :mod:`.java` and :mod:`.ptb_tokenizer` for what is
reproduced and how.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from vlkit.evaluation.caption_metrics.bleu import NgramCorpus, bleu_scores
from vlkit.evaluation.caption_metrics.cider import cider_d_scores, cider_scores
from vlkit.evaluation.caption_metrics.java import (
    JavaMetricError,
    MeteorScorer,
    check_spice,
    java_available,
    ptb_tokenize_java,
    spice_scores,
)
from vlkit.evaluation.caption_metrics.ptb_tokenizer import (
    ptb_tokenize,
    ptb_tokens,
    ptb_tokens_batch,
)
from vlkit.evaluation.caption_metrics.rouge import rouge_l_scores

__all__ = [
    "METRICS",
    "JavaMetricError",
    "caption_scores",
    "java_available",
    "ptb_tokenize",
    "ptb_tokenize_java",
    "ptb_tokens",
    "ptb_tokens_batch",
]

METRICS = ("bleu", "rouge_l", "cider_d", "cider_plain", "meteor", "spice")
_ALIASES = {"rouge": "rouge_l", "cider": "cider_d"}
TOKENIZERS = ("ptb", "ptb-java", None)


def _preview(ids: Iterable[Hashable], n: int = 5) -> str:
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:n])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > n else "")


def _check_inputs(
    references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, Any]
) -> tuple[list[Hashable], list[list[str]], dict[Hashable, str]]:
    if not isinstance(references, Mapping) or not isinstance(candidates, Mapping):
        raise TypeError("references and candidates must be dicts keyed by image id")
    ids = list(references)
    missing = [i for i in ids if i not in candidates]
    ref_ids = set(ids)
    extra = [i for i in candidates if i not in ref_ids]
    if missing or extra:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} id(s) have references but no candidate: {_preview(missing)}"
            )
        if extra:
            parts.append(
                f"{len(extra)} id(s) have a candidate but no references: {_preview(extra)}"
            )
        raise ValueError("candidates and references must have the same ids; " + "; ".join(parts))
    if not ids:
        raise ValueError("no captions to score (references and candidates are empty)")
    refs: list[list[str]] = []
    for i in ids:
        r = references[i]
        if isinstance(r, str):
            raise TypeError(f"references[{i!r}] must be a list of captions, not a string")
        r = list(r)
        if not r:
            raise ValueError(
                f"references[{i!r}] is empty: every image needs at least one reference"
            )
        if not all(isinstance(x, str) for x in r):
            raise TypeError(f"references[{i!r}] must contain only strings")
        refs.append(r)
    cands: dict[Hashable, str] = {}
    for i, c in candidates.items():
        # pycocoevalcap's format, a list holding one caption, is accepted too.
        if isinstance(c, (list, tuple)) and len(c) == 1:
            c = c[0]
        if not isinstance(c, str):
            raise TypeError(f"candidates[{i!r}] must be a string (one caption per image)")
        cands[i] = c
    return ids, refs, cands


def _tokenize(
    ids: list[Hashable],
    refs: list[list[str]],
    cands: dict[Hashable, str],
    tokenizer: str | None,
) -> tuple[list[list[list[str]]], list[list[str]]]:
    """Token lists, tokenized in pycocoevalcap's order: all references, then all candidates."""
    flat = [c for r in refs for c in r]
    cand_ids = list(cands)  # pycocoevalcap tokenizes the result dict in its own order
    if tokenizer == "ptb":
        flat_tok = ptb_tokens_batch(flat)
        cand_tok = ptb_tokens_batch([cands[i] for i in cand_ids])
    elif tokenizer == "ptb-java":
        flat_tok = ptb_tokenize_java(flat)
        cand_tok = ptb_tokenize_java([cands[i] for i in cand_ids])
    elif tokenizer is None:
        flat_tok = [c.split() for c in flat]
        cand_tok = [cands[i].split() for i in cand_ids]
    else:
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    by_id = dict(zip(cand_ids, cand_tok, strict=True))
    ref_tok, k = [], 0
    for r in refs:
        ref_tok.append(flat_tok[k : k + len(r)])
        k += len(r)
    return ref_tok, [by_id[i] for i in ids]


def caption_scores(
    references: Mapping[Hashable, Sequence[str]],
    candidates: Mapping[Hashable, str],
    metrics: Sequence[str] = ("bleu", "rouge_l", "cider_d"),
    tokenizer: str | None = "ptb",
    per_item: bool = False,
) -> dict[str, Any]:
    """Corpus-level captioning metrics, identical to pycocoevalcap's.

    Args:
        references: image id -> non-empty list of reference captions.
        candidates: image id -> the candidate caption (a one-element list is accepted too). The
            ids must be those of ``references``. An empty candidate is scored as an empty caption,
            as pycocoevalcap does (BLEU and CIDEr-D 0; ROUGE-L 0 unless a reference is empty too).
        metrics: any of "bleu" (BLEU-1..4), "rouge_l", "cider_d" (pycocoevalcap's ``Cider``),
            "cider_plain" (the paper's CIDEr without CIDEr-D's clipping and length penalty, as
            the original vrama91/cider code; :func:`.cider.cider_scores`),
            "meteor" and "spice" (both need Java and pycocoevalcap's jars; SPICE also needs
            Stanford CoreNLP 3.6.0, see :func:`.java.spice_scores`).
        tokenizer: "ptb" (vlkit's Python PTB tokenizer, same output as pycocoevalcap's),
            "ptb-java" (pycocoevalcap's Java PTBTokenizer), or None (captions are already
            tokenized: split on whitespace).
        per_item: also return ``"per_item"``: image id -> {metric: score}, with pycocoevalcap's
            per-image scores (for BLEU, its per-image BLEU on that image's counts alone).

    Returns:
        ``{"bleu_1": ..., "bleu_2": ..., "bleu_3": ..., "bleu_4": ..., "rouge_l": ...,
        "cider_d": ..., "meteor": ..., "spice": ...}`` for the metrics asked for, each the
        corpus-level value pycocoevalcap reports (BLEU pools n-gram counts over the corpus, METEOR
        pools its statistics; ROUGE-L, CIDEr-D and SPICE are means over images).

    Raises:
        ValueError: different id sets (a few of the ids are named), an image without references,
            an unknown metric or tokenizer.
        TypeError: a caption that is not a string.
        JavaMetricError: METEOR / SPICE / "ptb-java" cannot run (no java on PATH, missing jars or
            models) or failed.
    """
    wanted = []
    for m in metrics:
        m = _ALIASES.get(m, m)
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; choose from {METRICS}")
        if m not in wanted:
            wanted.append(m)
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    ids, refs, cands = _check_inputs(references, candidates)

    if "spice" in wanted:
        check_spice()  # fail before the other metrics are computed
    # The METEOR JVM takes seconds to load its paraphrase table: start it before the other work.
    meteor = MeteorScorer() if "meteor" in wanted else None
    try:
        ref_tok, cand_tok = _tokenize(ids, refs, cands, tokenizer)
        scores: dict[str, Any] = {}
        items: dict[str, Sequence[float]] = {}
        if {"bleu", "rouge_l", "cider_d", "cider_plain"} & set(wanted):
            corpus = NgramCorpus(cand_tok, ref_tok, max_n=4)
            if "bleu" in wanted:
                bleu, bleu_items = bleu_scores(corpus, n=4)
                for k in range(4):
                    scores[f"bleu_{k + 1}"] = float(bleu[k])
                    items[f"bleu_{k + 1}"] = bleu_items[:, k]
            if "rouge_l" in wanted:
                scores["rouge_l"], items["rouge_l"] = rouge_l_scores(corpus)
            if "cider_d" in wanted:
                scores["cider_d"], items["cider_d"] = cider_d_scores(corpus)
            if "cider_plain" in wanted:
                scores["cider_plain"], items["cider_plain"] = cider_scores(corpus)
        if meteor is not None or "spice" in wanted:
            # The Java metrics get the tokenized captions, as in pycocoevalcap.
            ref_text = [[" ".join(t) for t in r] for r in ref_tok]
            cand_text = [" ".join(t) for t in cand_tok]
            if meteor is not None:
                scores["meteor"], items["meteor"] = meteor.score(ref_text, cand_text)
            if "spice" in wanted:
                scores["spice"], items["spice"] = spice_scores(ref_text, cand_text)
    finally:
        if meteor is not None:
            meteor.close()

    ordered = {k: scores[k] for k in _result_keys(wanted)}
    if per_item:
        ordered["per_item"] = {
            img: {k: float(items[k][n]) for k in _result_keys(wanted)} for n, img in enumerate(ids)
        }
    return ordered


def _result_keys(wanted: Sequence[str]) -> list[str]:
    keys = []
    for m in METRICS:
        if m in wanted:
            keys += [f"bleu_{k}" for k in range(1, 5)] if m == "bleu" else [m]
    return keys
