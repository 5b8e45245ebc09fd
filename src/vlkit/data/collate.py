"""Batching image-text samples, dropping the ones a dataset had to skip.

Every image-text dataset in `vlkit.data.datasets` returns, per sample, either
`{"image": (3, S, S) float, "text": (L,) long, "index": int}` or, when the sample is unusable
(missing / corrupt image, empty caption, ...), `{"skipped": "<reason naming the file>",
"index": int}`. Datasets never raise for bad data, because one unreadable file among millions
should cost one sample, not a training run; `collate_image_text` drops those samples and hands
their reasons to the trainer, which counts and reports them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["collate_image_text"]


def collate_image_text(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stacks the good samples of a batch and lists the reasons of the skipped ones.

    Args:
        samples: Per-sample dicts as returned by the image-text datasets.

    Returns:
        A dict with
        - `images`: float tensor `(B, 3, S, S)`, the good samples in input order;
        - `texts`: long tensor `(B, L)`;
        - `indices`: long tensor `(B,)`, the dataset index of each good sample;
        - `skipped`: the one-line reasons of the skipped samples, in input order.
        `B` is the number of good samples, which is smaller than `len(samples)` when some
        were skipped. When every sample was skipped, `images` and `texts` are empty tensors
        of shape `(0, 0, 0, 0)` and `(0, 0)` (the image size and context length are unknown).

    Raises:
        ValueError: Good samples disagree in image or text shape.
    """
    good = [s for s in samples if "skipped" not in s]
    skipped = [str(s["skipped"]) for s in samples if "skipped" in s]
    if not good:
        return {
            "images": torch.empty((0, 0, 0, 0), dtype=torch.float32),
            "texts": torch.empty((0, 0), dtype=torch.long),
            "indices": torch.empty((0,), dtype=torch.long),
            "skipped": skipped,
        }
    images = [s["image"] for s in good]
    texts = [s["text"] for s in good]
    # torch.stack's own error does not say which sample is off; name the dataset indices.
    for name, tensors in (("image", images), ("text", texts)):
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            detail = ", ".join(f"index {s['index']}: {tuple(s[name].shape)}" for s in good)
            raise ValueError(f"samples in one batch have different {name} shapes ({detail})")
    return {
        "images": torch.stack(images),
        "texts": torch.stack(texts).to(torch.long),
        "indices": torch.tensor([int(s["index"]) for s in good], dtype=torch.long),
        "skipped": skipped,
    }
