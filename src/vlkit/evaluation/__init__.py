"""Evaluation: metric functions of arrays, and evaluators that run a model over data."""

from vlkit.evaluation.zero_shot import (
    build_zero_shot_classifier,
    classification_metrics,
    load_templates,
)

__all__ = ["build_zero_shot_classifier", "classification_metrics", "load_templates"]
