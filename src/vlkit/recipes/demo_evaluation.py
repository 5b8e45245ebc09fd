"""The demo's evaluator: zero-shot classification and class-match retrieval on easy-VQA.

`EasyVQAEvaluator` follows the evaluator protocol (`evaluate(model, data) -> dict[str, float]`,
with `predict` / `score` behind it); `data` is the pair (images (N, 3, S, S), labels (N,)) of
the preprocessed test images and their class indices (`CLASS_NAMES` order).

- Zero-shot classification over the 24 "<colour> <shape>" classes (`ZeroShotClassification`):
  top-1, top-5, mean per-class recall, and the colour / shape accuracy read off the predicted
  class (which half of the task fails).
- Retrieval R@1 between the test images and their canonical captions "a <colour> <shape>".
  Many images share a caption, so a retrieved caption (image -> text) or image (text -> image)
  counts as a hit when it has the query's class.
- The modality gap (Liang et al. 2022, `vlkit.evaluation.modality_gap`): the distance between
  the centroids of the unit image embeddings and of the unit embeddings of their canonical
  captions, and the mean cosine of each image with its caption. `modality_gap` alone measures it
  without the zero-shot work (the demo calls it on the untrained model too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vlkit.data.datasets.easy_vqa import CANONICAL_TEMPLATE, CLASS_NAMES, SHAPES
from vlkit.evaluation.embeddings import encode_images, encode_texts, image_batches
from vlkit.evaluation.evaluator import eval_mode
from vlkit.evaluation.modality_gap import modality_gap_metrics
from vlkit.evaluation.zero_shot import ZeroShotClassification, ZeroShotPredictions

__all__ = ["EasyVQAEvaluator", "EasyVQAPredictions"]


@dataclass
class EasyVQAPredictions:
    """Zero-shot outputs and the (C, D) unit embeddings of the classes' canonical captions."""

    zero_shot: ZeroShotPredictions
    captions: torch.Tensor


class EasyVQAEvaluator:
    """Zero-shot, colour / shape and class-match retrieval metrics of a CLIP on easy-VQA.

    Args:
        tokenizer: The model's tokenizer.
        templates: Prompt templates for the zero-shot class weights.
        batch_size: Images per forward pass.
    """

    def __init__(
        self,
        tokenizer: Callable[[list[str]], torch.Tensor],
        templates: Sequence[str],
        batch_size: int = 250,
    ) -> None:
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.zero_shot = ZeroShotClassification(tokenizer, CLASS_NAMES, templates, batch_size)

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, data: Any) -> EasyVQAPredictions:
        """Zero-shot predictions and the canonical caption embeddings."""
        zero_shot = self.zero_shot.predict(model, data)
        # Identical captions have identical embeddings: encode the 24 distinct ones only.
        captions = [CANONICAL_TEMPLATE.format(c) for c in CLASS_NAMES]
        with eval_mode(model):
            canonical = encode_texts(model, self.tokenizer, captions)  # (C, D)
        return EasyVQAPredictions(zero_shot, canonical)

    def score(self, predictions: EasyVQAPredictions, data: Any = None) -> dict[str, float]:
        """zero_shot_top1 / _top5 / _mean_per_class_recall, color_accuracy, shape_accuracy,
        retrieval_i2t_r1, retrieval_t2i_r1, modality_gap, mean_paired_cosine."""
        outputs = predictions.zero_shot
        labels = outputs.labels
        zero_shot = self.zero_shot.score(outputs)
        predicted = outputs.logits.argmax(dim=1)
        n_shapes = len(SHAPES)
        caption_emb = predictions.captions[labels]  # (N, D): caption i describes image i
        sims = outputs.image_embeddings @ caption_emb.T  # (N images, N captions)
        i2t = (labels[sims.argmax(dim=1)] == labels).float().mean().item()
        t2i = (labels[sims.argmax(dim=0)] == labels).float().mean().item()
        gap = _gap(outputs.image_embeddings, caption_emb)
        return {
            "zero_shot_top1": zero_shot["top1"],
            "zero_shot_top5": zero_shot["top5"],
            "zero_shot_mean_per_class_recall": zero_shot["mean_per_class_recall"],
            "color_accuracy": ((predicted // n_shapes) == (labels // n_shapes)).float().mean().item(),
            "shape_accuracy": ((predicted % n_shapes) == (labels % n_shapes)).float().mean().item(),
            "retrieval_i2t_r1": i2t,
            "retrieval_t2i_r1": t2i,
            **gap,
        }  # fmt: skip

    @torch.no_grad()
    def modality_gap(
        self, model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        """(modality_gap and mean_paired_cosine, image (N, D) and caption (N, D) unit
        embeddings): image i paired with its class's canonical caption."""
        images, labels = data
        captions = [CANONICAL_TEMPLATE.format(c) for c in CLASS_NAMES]
        with eval_mode(model):
            image_emb = encode_images(model, image_batches(images, self.batch_size))
            caption_emb = encode_texts(model, self.tokenizer, captions)[labels]
        return _gap(image_emb, caption_emb), image_emb, caption_emb

    def evaluate(self, model: torch.nn.Module, data: Any) -> dict[str, float]:
        """The metrics of `score`, fractions in [0, 1]."""
        return self.score(self.predict(model, data), data)


def _gap(image_emb: torch.Tensor, caption_emb: torch.Tensor) -> dict[str, float]:
    """modality_gap and mean_paired_cosine of images and their captions (row i with row i)."""
    gap = modality_gap_metrics(image_emb, caption_emb, range(len(caption_emb)))
    return {"modality_gap": gap["modality_gap"], "mean_paired_cosine": gap["mean_paired_cosine"]}
