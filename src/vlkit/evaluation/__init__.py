"""Evaluation: metric functions of arrays, and evaluators that run a model over data."""

from vlkit.evaluation.caption_metrics import caption_scores, ptb_tokenize
from vlkit.evaluation.linear_probe import fit_logistic_regression, linear_probe
from vlkit.evaluation.modality_gap import modality_gap
from vlkit.evaluation.retrieval import retrieval_metrics, retrieval_ranks, summarize_ranks
from vlkit.evaluation.vqa import (
    exact_match_accuracy,
    normalize_vqa_answer,
    vqa_accuracy,
    vqa_corpus_accuracy,
)
from vlkit.evaluation.zero_shot import (
    build_zero_shot_classifier,
    classification_metrics,
    load_templates,
    zero_shot,
)

__all__ = [
    "build_zero_shot_classifier",
    "caption_scores",
    "classification_metrics",
    "exact_match_accuracy",
    "fit_logistic_regression",
    "linear_probe",
    "load_templates",
    "modality_gap",
    "normalize_vqa_answer",
    "ptb_tokenize",
    "retrieval_metrics",
    "retrieval_ranks",
    "summarize_ranks",
    "vqa_accuracy",
    "vqa_corpus_accuracy",
    "zero_shot",
]
