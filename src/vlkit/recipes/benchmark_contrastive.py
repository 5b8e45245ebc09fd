"""The contrastive tasks of `vlkit benchmark`: zero-shot classification, retrieval, linear probe.

Each function runs a CLIP-like model over one dataset adapter's samples and returns
(metrics with CLIP_benchmark's keys, details for the report). The computation is the one of
CLIP_benchmark 1.6.2 (clip_benchmark/metrics/zeroshot_classification.py, zeroshot_retrieval.py,
linear_probe.py), step by step, so that on the same model and data every metric is the same:

* class weights: per class, the templates filled with `template.format(c=name)`, each embedding
  L2-normalised, their mean normalised again; logits `100 * normalize(image) @ weights`;
  acc1 / acc5 from one `topk` (top-5 only with >= 5 classes), mean per-class recall =
  sklearn's balanced accuracy of the argmax, with CLIP_benchmark's arithmetic
  (`linear_probe_adamw.clip_benchmark_accuracy`: Python-float counts / n, float64 recalls);
* retrieval: recall@K of a caption (image retrieval) or an image (text retrieval) is 1 when one
  of its positives is among the K best scores (vlkit's `retrieval_ranks`: rank = 1 + number of
  negatives scoring strictly higher, equal to CLIP_benchmark's `topk` count without exact ties);
* linear probe: `vlkit.evaluation.linear_probe_adamw` (CLIP_benchmark's AdamW probe).

`amp` is CLIP_benchmark's autocast (`torch.autocast(device)`: bf16 on CPU, fp16 on CUDA), which
`clip_benchmark eval` turns on by default (`--no_amp` turns it off); vlkit's default is fp32.
Images are decoded and transformed in DataLoader workers while the model runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from vlkit.evaluation.linear_probe_adamw import clip_benchmark_accuracy, linear_probe_adamw
from vlkit.evaluation.retrieval import retrieval_ranks
from vlkit.evaluation.zero_shot import encode_by_length, per_class_recall

__all__ = ["linear_probe_task", "retrieval_task", "zeroshot_task"]


class _Transformed(Dataset):
    """An adapter's (image, target) samples with the model's transform applied to the image."""

    def __init__(self, samples: Any, transform: Callable[[Any], torch.Tensor]) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        image, target = self.samples[i]
        return self.transform(image), target


def _collate_captions(batch: list) -> tuple[torch.Tensor, list[list[str]]]:
    images, captions = zip(*batch, strict=True)
    return torch.stack(images), [list(c) for c in captions]


def _loader(samples: Any, transform: Any, batch_size: int, workers: int, captions: bool = False):
    return DataLoader(
        _Transformed(samples, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate_captions if captions else None,
        persistent_workers=False,
    )


def _progress(loader: Iterable[Any], total: int, desc: str, enabled: bool) -> Iterator[Any]:
    """The loader's batches on a tqdm bar counting images (rate in img/s and time left)."""
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False) as bar:
        for batch in loader:
            yield batch
            bar.update(len(batch[0]))


def _fill(template: str, name: str) -> str:
    # CLIP_benchmark's templates say "{c}"; vlkit's shipped sets say "{}".
    return template.format(c=name) if "{c}" in template else template.format(name)


@torch.no_grad()
def class_weights(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    device: torch.device,
    amp: bool = False,
    batch_size: int = 256,
) -> torch.Tensor:
    """(D, C) zero-shot weights, CLIP_benchmark's `zero_shot_classifier` (texts batched)."""
    texts = [_fill(t, name) for name in classnames for t in templates]
    with torch.autocast(device.type, enabled=amp):
        embeddings = encode_by_length(
            lambda batch: F.normalize(model.encode_text(tokenizer(batch).to(device)), dim=-1),
            texts,
            batch_size,
        )
        per_class = embeddings.view(len(classnames), len(templates), -1)
        weights = per_class.mean(dim=1)
        weights = weights / weights.norm(dim=-1, keepdim=True)
    return weights.T  # (D, C)


@torch.no_grad()
def zeroshot_task(
    model: torch.nn.Module,
    tokenizer: Any,
    transform: Any,
    dataset: Any,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 2,
    amp: bool = False,
    progress: bool = True,
) -> tuple[dict[str, float], dict[str, Any]]:
    """acc1, acc5, mean_per_class_recall; details: {"per_class_recall": {class: recall}}."""
    classnames, templates = list(dataset.classes), list(dataset.templates)
    # Workers start decoding the first batches now, while the prompts are encoded.
    batches = iter(_loader(dataset, transform, batch_size, workers))
    try:
        weights = class_weights(model, tokenizer, classnames, templates, device, amp)
    except BaseException:
        del batches  # its workers stop now, not when the traceback is collected
        raise
    logits, labels = [], []
    for images, target in _progress(batches, len(dataset), "zero-shot", progress):
        with torch.autocast(device.type, enabled=amp):
            features = F.normalize(model.encode_image(images.to(device)), dim=-1)
            logits.append((100.0 * features @ weights).float().cpu())
        labels.append(torch.as_tensor(target))
    all_logits, all_labels = torch.cat(logits), torch.cat(labels).long()
    acc1, acc5, recall = clip_benchmark_accuracy(all_logits, all_labels, len(classnames) >= 5)
    recalls = per_class_recall(all_logits, all_labels, classnames)
    metrics = {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": recall}
    return metrics, {"per_class_recall": recalls}


@torch.no_grad()
def retrieval_task(
    model: torch.nn.Module,
    tokenizer: Any,
    transform: Any,
    dataset: Any,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 2,
    amp: bool = False,
    progress: bool = True,
    recall_k: Sequence[int] = (1, 5, 10),
    curve_k: int = 50,
) -> tuple[dict[str, float], dict[str, Any]]:
    """image_retrieval_recall@K and text_retrieval_recall@K; details: the Recall@K curves."""
    image_chunks, text_chunks, text_image = [], [], []
    loader = _loader(dataset, transform, batch_size, workers, captions=True)
    offset = 0
    for images, captions in _progress(loader, len(dataset), "retrieval", progress):
        texts = [text for group in captions for text in group]
        text_image += [offset + i for i, group in enumerate(captions) for _ in group]
        offset += len(captions)
        with torch.autocast(device.type, enabled=amp):
            image_chunks.append(F.normalize(model.encode_image(images.to(device)), dim=-1).cpu())
            ids = tokenizer(texts).to(device)
            text_chunks.append(F.normalize(model.encode_text(ids), dim=-1).cpu())
    # CLIP_benchmark scores the embeddings in their autocast dtype (`texts_emb @ images_emb.t()`);
    # ranks are computed in that dtype too, so ties made by rounding fall the same way.
    image_emb, text_emb = torch.cat(image_chunks), torch.cat(text_chunks)
    i2t, t2i = retrieval_ranks(image_emb, text_emb, text_image, compute_dtype=image_emb.dtype)
    metrics: dict[str, float] = {}
    for k in recall_k:
        metrics[f"image_retrieval_recall@{k}"] = float((t2i <= k).float().mean())
        metrics[f"text_retrieval_recall@{k}"] = float((i2t <= k).float().mean())
    ks = list(range(1, curve_k + 1))
    curves = {
        "image retrieval (text -> image)": [float((t2i <= k).float().mean()) for k in ks],
        "text retrieval (image -> text)": [float((i2t <= k).float().mean()) for k in ks],
    }
    return metrics, {"recall_curves": {"ks": ks, **curves}, "texts": len(text_image)}


@torch.no_grad()
def _features(model, transform, dataset, device, batch_size, workers, amp, progress, desc):
    """CLIP_benchmark's `Featurizer` over a split: normalised image features and labels."""
    features, labels = [], []
    loader = _loader(dataset, transform, batch_size, workers)
    for images, target in _progress(loader, len(dataset), desc, progress):
        with torch.autocast(device.type, enabled=amp):
            features.append(F.normalize(model.encode_image(images.to(device)), dim=-1).cpu())
        labels.append(torch.as_tensor(target))
    return torch.cat(features), torch.cat(labels).long()


def linear_probe_task(
    model: torch.nn.Module,
    transform: Any,
    train_set: Any,
    test_set: Any,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 2,
    amp: bool = False,
    progress: bool = True,
    seed: int = 0,
    lr: float = 0.1,
    epochs: int = 10,
    val_proportion: float | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """CLIP_benchmark's linear probe (lp_acc1, lp_acc5, lp_mean_per_class_recall, ...).

    Args:
        val_proportion: CLIP_benchmark's `--val_proportion`: hold out this share of the train
            set (`torch.utils.data.random_split(train, [1 - p, p])`, seeded with `seed` here,
            from the global RNG there), choose the weight decay on it with the CLIP paper's
            search (`linear_probe_adamw`), then train on train + held-out. None: weight decay 0.
    """
    if val_proportion is not None and not 0 < val_proportion < 1:
        raise ValueError(f"val_proportion must be in (0, 1), got {val_proportion}")
    args = (device, batch_size, workers, amp, progress)
    train_x, train_y = _features(model, transform, train_set, *args, "probe: train features")
    test_x, test_y = _features(model, transform, test_set, *args, "probe: test features")
    val_x = val_y = None
    if val_proportion is not None:
        generator = torch.Generator().manual_seed(seed)
        kept, held_out = torch.utils.data.random_split(
            range(len(train_x)), [1 - val_proportion, val_proportion], generator=generator
        )
        if len(kept) == 0 or len(held_out) == 0:
            raise ValueError(f"val_proportion {val_proportion} of {len(train_x)} train samples "
                             "leaves an empty train or validation split")  # fmt: skip
        val_x, val_y = train_x[list(held_out.indices)], train_y[list(held_out.indices)]
        train_x, train_y = train_x[list(kept.indices)], train_y[list(kept.indices)]
    # CLIP_benchmark draws this order with torch.randperm from the global RNG after its model is
    # built, so its order depends on open_clip's initialisation; here it is seeded directly.
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
    metrics = linear_probe_adamw(train_x[order], train_y[order], test_x, test_y, val_x, val_y,
                                 lr=lr, epochs=epochs, batch_size=batch_size, seed=seed,
                                 device=device, amp=amp)  # fmt: skip
    details = {"train_samples": len(train_x)}
    if val_x is not None:
        details["val_samples"] = len(val_x)
    return metrics, details
