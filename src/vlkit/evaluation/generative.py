"""Evaluators of generative VLMs: greedy answers scored by VQA accuracy or caption metrics.

A generative VLM here is any model with `image_token_id`, `generate(input_ids, pixel_values=...,
attention_mask=..., max_new_tokens=..., eos_token_id=...)` returning prompt + new tokens, and
either `num_image_tokens` or `encode_images` (the fusion VLMs `train-vlm` builds). The decode is
the model's own greedy `generate`: evaluation sits below training, inference and recipes, so it
uses nothing of theirs.

The datasets (`EasyVQAQuestions`, `SceneQuestions`, `SceneCaptions`) provide `load_image(i)`
((3, S, S) pixels), `prompt_ids(i)` (the unpadded prompt), `answer(i)` / `references(i)` and
their `tokenizer` (`decode`, `eot_token_id`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vlkit.evaluation.caption_metrics import caption_scores
from vlkit.evaluation.evaluator import eval_mode
from vlkit.evaluation.vqa import exact_match_accuracy

__all__ = [
    "CaptionMetrics",
    "VQAAccuracy",
    "answer_accuracy",
    "generate_answers",
    "num_image_tokens",
    "predict_answers",
]


def num_image_tokens(model: nn.Module, images: torch.Tensor | None = None) -> int:
    """Placeholders one image fills: `model.num_image_tokens`, else measured on `images[:1]`.

    Raises:
        ValueError: The model has no `num_image_tokens` and no images were given.
    """
    count = getattr(model, "num_image_tokens", None)
    if count is not None:
        return int(count)
    if images is None:
        raise ValueError("the model has no num_image_tokens attribute: pass images to measure")
    with torch.no_grad():
        return int(model.encode_images(images[:1]).shape[0])


@torch.no_grad()
def generate_answers(
    model: nn.Module,
    images: torch.Tensor,
    prompts: Sequence[torch.Tensor],
    tokenizer: Any,
    max_new_tokens: int = 4,
    image_tokens: int | None = None,
) -> list[str]:
    """Greedy answers to left-padded `[<image> x T] + prompt` inputs.

    Args:
        model: The VLM.
        images: (B, 3, S, S).
        prompts: B unpadded (P_i,) prompt id tensors.
        tokenizer: Decodes ids (`decode`, `eot_token_id`).
        max_new_tokens: Generation budget per answer.
        image_tokens: Placeholders per image; default `num_image_tokens(model, images)`.

    Returns:
        B decoded answers (cut at end-of-text).
    """
    t = image_tokens if image_tokens is not None else num_image_tokens(model, images)
    longest = max(len(p) for p in prompts)
    b = len(prompts)
    # Left padding, then the placeholders, then the prompt: placeholders before the padding
    # would leave a gap between image and text.
    full = torch.zeros((b, t + longest), dtype=torch.long)  # (B, T + P)
    full_mask = torch.zeros_like(full)
    for row, prompt in enumerate(prompts):
        start = longest - len(prompt)
        full[row, start : start + t] = model.image_token_id
        full[row, start + t :] = prompt
        full_mask[row, start:] = 1
    device = next(model.parameters()).device
    out = model.generate(
        full.to(device),
        pixel_values=images[:, None].to(device),
        attention_mask=full_mask.to(device),
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eot_token_id,
    )  # (B, T + P + N)
    return [tokenizer.decode(row[t + longest :].cpu()) for row in out]


def predict_answers(
    model: nn.Module,
    dataset: Any,
    indices: Sequence[int] | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 4,
) -> list[str]:
    """Greedy answers (or captions) to dataset items, `batch_size` items generated together.

    The model is in eval mode for the duration, then restored.
    """
    indices = list(range(len(dataset))) if indices is None else list(indices)
    predictions: list[str] = []
    with eval_mode(model):
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            images = torch.stack([dataset.load_image(i) for i in chunk])  # (b, 3, S, S)
            prompts = [dataset.prompt_ids(i) for i in chunk]
            predictions += generate_answers(
                model, images, prompts, dataset.tokenizer, max_new_tokens
            )
    return predictions


def answer_accuracy(
    model: nn.Module,
    dataset: Any,
    indices: Sequence[int] | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 4,
) -> tuple[float, list[str]]:
    """Exact-match accuracy of greedy answers on dataset items (e.g. `EasyVQAQuestions`).

    Args:
        model: The VLM (put in eval mode for the duration, then restored).
        dataset: Has `load_image(i)`, `prompt_ids(i)`, `answer(i)` and `tokenizer`.
        indices: Items to score; default all.
        batch_size: Items generated together.
        max_new_tokens: Generation budget per answer.

    Returns:
        (accuracy in [0, 1] from `vlkit.evaluation.exact_match_accuracy`, the predictions).
    """
    indices = list(range(len(dataset))) if indices is None else list(indices)
    predictions = predict_answers(model, dataset, indices, batch_size, max_new_tokens)
    answers = [dataset.answer(i) for i in indices]
    return exact_match_accuracy(predictions, answers), predictions


def _first(dataset: Any, max_items: int | None) -> list[int]:
    return list(range(len(dataset) if max_items is None else min(max_items, len(dataset))))


class VQAAccuracy:
    """Exact-match accuracy of greedy answers (per question type too when the data has types).

    `data` is a VQA dataset (`load_image`, `prompt_ids`, `answer`, `tokenizer`; optionally
    `types`, one question type per item, as `SceneQuestions` has). The first `max_items` items
    are scored (all when None).

    Args:
        batch_size: Items generated together.
        max_new_tokens: Generation budget per answer.
        max_items: Score only the first N items.
    """

    def __init__(
        self, batch_size: int = 256, max_new_tokens: int = 3, max_items: int | None = None
    ) -> None:
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_items = max_items

    def predict(self, model: nn.Module, data: Any) -> list[str]:
        """Greedy answers to the first `max_items` items."""
        indices = _first(data, self.max_items)
        return predict_answers(model, data, indices, self.batch_size, self.max_new_tokens)

    def score(self, predictions: Sequence[str], data: Any) -> dict[str, float]:
        """{"accuracy", "accuracy_<type>" for each question type when `data` has `types`}."""
        indices = range(len(predictions))
        answers = [data.answer(i) for i in indices]
        result = {"accuracy": exact_match_accuracy(predictions, answers)}
        types = getattr(data, "types", None)
        if types is not None:
            for kind in sorted({types[i] for i in indices}):
                chosen = [(predictions[i], answers[i]) for i in indices if types[i] == kind]
                result[f"accuracy_{kind}"] = exact_match_accuracy(*zip(*chosen, strict=True))
        return result

    def evaluate(self, model: nn.Module, data: Any) -> dict[str, float]:
        """Exact-match answer accuracy (overall and per question type)."""
        return self.score(self.predict(model, data), data)


class CaptionMetrics:
    """COCO caption metrics (`caption_scores`) of greedy captions against the references.

    `data` is a captioning dataset (`load_image`, `prompt_ids`, `references(i)` -> list of
    reference captions, `tokenizer`, `max_length`). The first `max_items` items are scored.

    Args:
        metrics: `caption_scores` metric names.
        batch_size: Items generated together.
        max_new_tokens: Generation budget per caption; None: the dataset's `max_length`.
        max_items: Score only the first N items.
        tokenizer: `caption_scores`' caption tokenizer ("ptb", "ptb-java" or None).
    """

    def __init__(
        self,
        metrics: Sequence[str] = ("bleu", "rouge_l", "cider_d"),
        batch_size: int = 256,
        max_new_tokens: int | None = None,
        max_items: int | None = None,
        tokenizer: str | None = "ptb",
    ) -> None:
        self.metrics = tuple(metrics)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_items = max_items
        self.tokenizer = tokenizer

    def predict(self, model: nn.Module, data: Any) -> list[str]:
        """Greedy captions of the first `max_items` items."""
        budget = self.max_new_tokens if self.max_new_tokens is not None else data.max_length
        indices = _first(data, self.max_items)
        return predict_answers(model, data, indices, self.batch_size, budget)

    def score(self, predictions: Sequence[str], data: Any) -> dict[str, float]:
        """Corpus scores: bleu_1..bleu_4, rouge_l, cider_d (those of `metrics`)."""
        references = {i: data.references(i) for i in range(len(predictions))}
        candidates = dict(enumerate(predictions))
        return caption_scores(references, candidates, self.metrics, tokenizer=self.tokenizer)

    def evaluate(self, model: nn.Module, data: Any) -> dict[str, float]:
        """BLEU-1..4, ROUGE-L and CIDEr-D of the model's captions."""
        return self.score(self.predict(model, data), data)
