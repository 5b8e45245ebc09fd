"""Zero-shot classification with prompt ensembles (Radford et al. 2021, Sec. 3.1.4).

Each class's weight vector is the mean of its L2-normalised text embeddings over the templates,
normalised again (as CLIP's ImageNet notebook and open_clip's `build_zero_shot_classifier` do).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlkit.data.transforms import to_batch
from vlkit.evaluation.embeddings import labelled_batches
from vlkit.evaluation.evaluator import eval_mode

# Names of the template sets shipped in vlkit/assets/templates/.
TEMPLATE_SETS = ("openai-imagenet", "cifar", "none")


def load_templates(name_or_file: str | Path) -> list[str]:
    """Prompt templates with one `{}` for the class name.

    Args:
        name_or_file: "openai-imagenet" (CLIP's 80 ImageNet templates), "cifar" (CLIP's 18 CIFAR
            templates), "none" (the class name alone), or a text file with one template per
            line (blank lines and lines starting with # are skipped), or a JSON list.
    """
    if name_or_file == "none":
        return ["{}"]
    if name_or_file in TEMPLATE_SETS:
        text = (
            resources.files("vlkit").joinpath(f"assets/templates/{name_or_file}.json").read_text()
        )
        return list(json.loads(text)["templates"])
    path = Path(name_or_file)
    if not path.is_file():
        raise ValueError(
            f"templates {str(name_or_file)!r}: not one of {', '.join(TEMPLATE_SETS)} "
            "and no such file"
        )
    raw = path.read_text()
    if path.suffix == ".json":
        data = json.loads(raw)
        templates = data["templates"] if isinstance(data, dict) else data
    else:
        templates = [line.strip() for line in raw.splitlines()]
        templates = [t for t in templates if t and not t.startswith("#")]
    bad = [t for t in templates if "{}" not in t and "{c}" not in t]
    if not templates or bad:
        raise ValueError(f"{path}: every template needs a '{{}}' placeholder (bad: {bad[:3]})")
    return [t.replace("{c}", "{}") for t in templates]


@torch.no_grad()
def build_zero_shot_classifier(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """Class weight vectors (num_classes, embed_dim), unit length, from classnames x templates."""
    if not classnames or not templates:
        raise ValueError("need at least one class name and one template")
    device = next(model.parameters()).device
    texts = [template.format(name) for name in classnames for template in templates]
    embeddings = encode_by_length(
        lambda batch: model.encode_text(tokenizer(batch).to(device), normalize=True).float(),
        texts,
        batch_size,
    )
    per_template = embeddings.view(len(classnames), len(templates), -1)
    return F.normalize(per_template.mean(dim=1), dim=-1)


def encode_by_length(
    encode: Callable[[list[str]], torch.Tensor], texts: Sequence[str], batch_size: int
) -> torch.Tensor:
    """`encode` of `texts` in batches of texts of similar length, rows in the order of `texts`.

    A CLIP text tower runs each batch up to its longest prompt's end-of-text token only
    (`TextTransformer.pooled_features`), so grouping prompts by length (characters, a proxy for
    tokens) saves the compute that a long prompt would force on the short ones of its batch:
    ImageNet's 1000 classes x 80 templates mix 3- and 30-token prompts. Each row's embedding does
    not depend on the others in its batch, so the order changes nothing but float reassociation.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks = [
        encode([texts[i] for i in order[start : start + batch_size]])
        for start in range(0, len(texts), batch_size)
    ]
    stacked = torch.cat(chunks)
    embeddings = torch.empty_like(stacked)
    embeddings[torch.tensor(order, device=stacked.device)] = stacked
    return embeddings


@torch.no_grad()
def label_probabilities(
    model: torch.nn.Module,
    image_embeds: torch.Tensor,
    classifier: torch.Tensor,
    temperature: float | None = None,
) -> torch.Tensor:
    """(N, C) probabilities of the classes for unit image embeddings (N, D).

    CLIP: softmax over the classes of the temperature-scaled cosine similarities. SigLIP (a model
    with a logit bias): the per-class sigmoid of its logits, the probability it was trained to
    output (as transformers' zero-shot pipeline reports it).

    Args:
        temperature: Use logits cos / temperature instead of the model's learned scale (the
            course's tau = 0.01 / 0.07 / 0.5 sweep): sharper or flatter probabilities, the same
            ranking. None: the model's own.
    """
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scale = model.temperature().float() if temperature is None else 1.0 / temperature
    logits = scale * image_embeds.float() @ classifier.T.float()
    if getattr(model, "logit_bias", None) is not None:
        return torch.sigmoid(logits + model.logit_bias.float())
    return logits.softmax(dim=-1)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top-1, top-5 (NaN with fewer than 5 classes) and mean per-class recall.

    Mean per-class recall averages the recall of the classes present in `labels`, as
    CLIP_benchmark's `balanced_accuracy_score` does. The predictions come from the calls
    CLIP_benchmark makes (metrics/zeroshot_classification.py): top-1 and top-5 from one
    `topk(5)` (`topk(1)` with fewer than 5 classes), the per-class recall from `argmax`, so exact
    ties between class scores are resolved as there.
    """
    num_classes = logits.shape[1]
    ranked = logits.topk(5 if num_classes >= 5 else 1, dim=1).indices
    correct = ranked == labels[:, None]
    top1 = correct[:, 0].float().mean().item()
    top5 = correct.any(dim=1).float().mean().item() if num_classes >= 5 else math.nan
    predicted = logits.argmax(dim=1)
    recalls = [(predicted[labels == c] == c).float().mean().item() for c in labels.unique()]
    return {"top1": top1, "top5": top5, "mean_per_class_recall": sum(recalls) / len(recalls)}


def per_class_recall(
    logits: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str]
) -> dict[str, float]:
    """{class name: top-1 recall} for every class (NaN for a class absent from `labels`)."""
    predicted = logits.argmax(dim=1)
    return {
        name: (predicted[labels == c] == c).float().mean().item()
        for c, name in enumerate(classnames)
    }


@dataclass
class ZeroShotPredictions:
    """What `ZeroShotClassification.predict` computes (float32, on the CPU).

    Attributes:
        logits: (N, C) cosine similarities of the images to the class weights.
        labels: (N,) true class indices.
        image_embeddings: (N, D) unit-length image embeddings.
        classifier: (C, D) unit-length class weights.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    image_embeddings: torch.Tensor
    classifier: torch.Tensor


class ZeroShotClassification:
    """Zero-shot classification evaluator: top-1, top-5, mean per-class recall.

    `data` is a pair (images (N, 3, S, S), labels (N,)) of preprocessed images and class
    indices, or an iterable of such (images, labels) batches (a DataLoader, or
    `vlkit.evaluation.embeddings.image_file_batches(paths, transform, labels=...)`).

    Args:
        tokenizer: The model's tokenizer.
        classnames: One name per class, in label order.
        templates: Template strings or a template-set name for `load_templates`.
        batch_size: Images per forward pass for a tensor input.
        per_class_recall: Also return "per_class_recall/<class name>" for every class.
    """

    def __init__(
        self,
        tokenizer: Callable[[list[str]], torch.Tensor],
        classnames: Sequence[str],
        templates: Sequence[str] | str = "openai-imagenet",
        batch_size: int = 256,
        per_class_recall: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.classnames = list(classnames)
        self.templates = load_templates(templates) if isinstance(templates, str) else templates
        self.batch_size = batch_size
        self.per_class_recall = per_class_recall

    def classifier(self, model: torch.nn.Module) -> torch.Tensor:
        """(C, D) unit-length class weights on the model's device (`build_zero_shot_classifier`)."""
        return build_zero_shot_classifier(model, self.tokenizer, self.classnames, self.templates)

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, data: Any) -> ZeroShotPredictions:
        """Class weights, image embeddings and their (N, C) logits, batch by batch."""
        with eval_mode(model):
            classifier = self.classifier(model)
            device = classifier.device
            embeddings, logits, labels = [], [], []
            for images, batch_labels in labelled_batches(data, self.batch_size):
                image = model.encode_image(images.to(device), normalize=True).float()  # (B, D)
                embeddings.append(image.cpu())
                logits.append(image @ classifier.T)  # (B, C)
                labels.append(torch.as_tensor(batch_labels))
        if not logits:
            raise ValueError("no images to classify")
        all_labels = torch.cat(labels).cpu().long()
        all_logits = torch.cat(logits).cpu()
        if all_labels.numel() != all_logits.shape[0]:
            raise ValueError("labels are missing or do not match the number of images")
        # An out-of-range label can never be predicted: it would only lower top-1 silently.
        outside = (all_labels < 0) | (all_labels >= all_logits.shape[1])
        if outside.any():
            bad = int(all_labels[outside][0])
            raise ValueError(f"label {bad} is out of range: with {all_logits.shape[1]} classnames "
                             f"the labels must be in 0..{all_logits.shape[1] - 1}")  # fmt: skip
        return ZeroShotPredictions(all_logits, all_labels, torch.cat(embeddings), classifier.cpu())

    def score(self, predictions: ZeroShotPredictions, data: Any = None) -> dict[str, float]:
        """`classification_metrics` of the logits (+ the per-class recalls when asked)."""
        metrics = classification_metrics(predictions.logits, predictions.labels)
        if self.per_class_recall:
            recalls = per_class_recall(predictions.logits, predictions.labels, self.classnames)
            metrics.update({f"per_class_recall/{name}": value for name, value in recalls.items()})
        return metrics

    def evaluate(self, model: torch.nn.Module, data: Any) -> dict[str, float]:
        """top-1, top-5 (NaN with fewer than 5 classes), mean per-class recall."""
        return self.score(self.predict(model, data), data)


def _with_labels(
    batches: Iterable, labels: torch.Tensor | Sequence[int] | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches of a loader that yields images alone or (images, labels)."""
    given = None if labels is None else torch.as_tensor(labels)
    offset = 0
    for batch in batches:
        if isinstance(batch, (tuple, list)):
            yield batch[0], torch.as_tensor(batch[1])
            continue
        if given is None or offset + len(batch) > len(given):
            raise ValueError("labels are missing or do not match the number of images")
        yield batch, given[offset : offset + len(batch)]
        offset += len(batch)
    if offset and offset != len(given):
        raise ValueError("labels are missing or do not match the number of images")


def _is_image_list(value: Any) -> bool:
    """A list of single images (PIL, numpy, path) rather than of batches or (images, labels)."""
    if not isinstance(value, (list, tuple)) or not value:
        return False
    first = value[0]
    if isinstance(first, (str, os.PathLike, Image.Image)):
        return True
    return isinstance(first, np.ndarray) and first.ndim in (2, 3) and first.dtype == np.uint8


def zero_shot(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    images_or_loader: torch.Tensor | Iterable,
    labels: torch.Tensor | Sequence[int] | None,
    classnames: Sequence[str],
    templates: Sequence[str] | str = "openai-imagenet",
    batch_size: int = 256,
    transform: Callable[[Any], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Zero-shot classification of images: top-1, top-5, mean per-class recall.

    A function form of `ZeroShotClassification(...).evaluate`.

    Args:
        model: A CLIP-like model.
        tokenizer: Its tokenizer.
        images_or_loader: A list of images (PIL images, uint8 arrays or image file paths),
            preprocessed here with `transform`; a (N, 3, S, S) tensor of preprocessed images;
            or an iterable of image batches or of (images, labels) batches (labels then come
            from the loader).
        labels: (N,) class indices when `images_or_loader` is a list, a tensor or yields
            images only.
        classnames: One name per class, in label order.
        templates: Template strings or a template-set name for `load_templates`.
        batch_size: Images per forward pass for a list or tensor input.
        transform: The preprocessing of a list of images (default: the eval transform of
            `model.config.preprocess`, what `vlkit.get_transform(model)` returns).
    """
    if _is_image_list(images_or_loader):
        images_or_loader = to_batch(images_or_loader, transform or model.config.preprocess)
    if isinstance(images_or_loader, torch.Tensor):
        if labels is None:
            raise ValueError("labels are missing or do not match the number of images")
        data: Any = (images_or_loader, labels)
    else:
        data = _with_labels(images_or_loader, labels)
    evaluator = ZeroShotClassification(tokenizer, classnames, templates, batch_size)
    return evaluator.evaluate(model, data)


__all__ = [
    "TEMPLATE_SETS",
    "ZeroShotClassification",
    "ZeroShotPredictions",
    "build_zero_shot_classifier",
    "classification_metrics",
    "encode_by_length",
    "label_probabilities",
    "load_templates",
    "per_class_recall",
    "zero_shot",
]
