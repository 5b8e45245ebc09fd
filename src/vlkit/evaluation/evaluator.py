"""The one evaluator interface: `evaluate(model, data) -> dict[str, float]`.

An evaluator is configured once (tokenizer, class names, templates, batch sizes, ...) and then
run on any model and data of its kind; it returns named metrics (floats, fractions in [0, 1]
unless the name says otherwise: ranks, CIDEr-D). The trainer's `EvaluatorCallback`, the demo,
`vlkit eval` and the VLM recipes all call evaluators through this protocol (big_vision's
`evaluators/` are the model).

Every evaluator in `vlkit.evaluation` has the same two stages behind `evaluate`, for callers that
need more than the numbers (a report's per-class plot, a recall curve, example predictions):

    outputs = evaluator.predict(model, data)      # the model's part: embeddings, ranks, answers
    metrics = evaluator.score(outputs, data)      # pure metric functions of those outputs
    evaluator.evaluate(model, data) == metrics

The implementations:

=============================  ========================================================
`ZeroShotClassification`       prompt-ensemble zero-shot classification (zero_shot.py)
`ImageTextRetrieval`           image <-> text recall@K, mean/median rank (retrieval.py)
`LinearProbe`                  logistic regression on frozen features (linear_probe.py)
`VQAAccuracy`                  greedy answers, exact-match accuracy (generative.py)
`CaptionMetrics`               greedy captions, BLEU / ROUGE-L / CIDEr-D (generative.py)
=============================  ========================================================
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

from torch import nn

__all__ = ["Evaluator", "eval_mode"]


@runtime_checkable
class Evaluator(Protocol):
    """Runs a model over data and returns named metrics."""

    def evaluate(self, model: nn.Module, data: Any) -> dict[str, float]:
        """Named metrics of `model` on `data` (what `data` is depends on the evaluator)."""
        ...


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Puts `model` in eval mode for the block and restores its train/eval mode afterwards.

    Evaluation runs in the middle of training (the trainer's callback), where dropout and
    BatchNorm must be off for the evaluation and back on for the next step.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
