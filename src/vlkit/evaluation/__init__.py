"""Evaluation: metric functions of arrays, and evaluators that run a model over data.

Every evaluator has `evaluate(model, data) -> dict[str, float]` (`vlkit.evaluation.Evaluator`).
"""

from vlkit.evaluation.caption_metrics import caption_scores, ptb_tokenize
from vlkit.evaluation.embeddings import encode_image_files, encode_images, encode_texts
from vlkit.evaluation.evaluator import Evaluator
from vlkit.evaluation.generative import CaptionMetrics, VQAAccuracy, answer_accuracy
from vlkit.evaluation.linear_probe import (
    LinearProbe,
    ProbeData,
    fit_logistic_regression,
    linear_probe,
)
from vlkit.evaluation.modality_gap import modality_gap, modality_gap_metrics
from vlkit.evaluation.retrieval import (
    ImageTextRetrieval,
    RetrievalData,
    retrieval_metrics,
    retrieval_ranks,
    summarize_ranks,
)
from vlkit.evaluation.vqa import (
    exact_match_accuracy,
    normalize_vqa_answer,
    vqa_accuracy,
    vqa_corpus_accuracy,
)
from vlkit.evaluation.zero_shot import (
    ZeroShotClassification,
    build_zero_shot_classifier,
    classification_metrics,
    load_templates,
    zero_shot,
)

__all__ = [
    "CaptionMetrics",
    "Evaluator",
    "ImageTextRetrieval",
    "LinearProbe",
    "ProbeData",
    "RetrievalData",
    "VQAAccuracy",
    "ZeroShotClassification",
    "answer_accuracy",
    "build_zero_shot_classifier",
    "caption_scores",
    "classification_metrics",
    "encode_image_files",
    "encode_images",
    "encode_texts",
    "exact_match_accuracy",
    "fit_logistic_regression",
    "linear_probe",
    "load_templates",
    "modality_gap",
    "modality_gap_metrics",
    "normalize_vqa_answer",
    "ptb_tokenize",
    "retrieval_metrics",
    "retrieval_ranks",
    "summarize_ranks",
    "vqa_accuracy",
    "vqa_corpus_accuracy",
    "zero_shot",
]
