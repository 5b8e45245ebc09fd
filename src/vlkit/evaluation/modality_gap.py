"""The modality gap of a joint embedding space (Liang et al., 2022).

Liang, Zhang, Kwon, Yeung, Zou, "Mind the Gap: Understanding the Modality Gap in Multi-modal
Contrastive Representation Learning", NeurIPS 2022 (arXiv:2203.02053), Sec. 4: the gap vector is
the difference between the centroids of the L2-normalised image and text embeddings,
    gap = mean_i x_i / ||x_i|| - mean_j y_j / ||y_j||,
and its norm ||gap|| is "the modality gap". CLIP's embeddings occupy two narrow cones, so the gap
is far from 0 (about 0.82 for CLIP ViT-B/32 on MSCOCO in the paper).

The mean paired distance, mean_i ||x_i/||x_i|| - y_i/||y_i||||, is reported alongside for paired
data (image i with its caption i). For unit vectors ||x - y|| = sqrt(2 - 2 cos(x, y)), so it is a
monotone function of the pairs' cosine similarity, which is also returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _check(x: Any, name: str) -> torch.Tensor | np.ndarray:
    if not isinstance(x, torch.Tensor | np.ndarray):
        x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(
            f"{name}: expected a non-empty 2-D array (n, dim), got shape {tuple(x.shape)}"
        )
    return x


def _normalized_rows(x: torch.Tensor | np.ndarray, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop), L2-normalised, as a float64 CPU tensor (copies only those rows)."""
    block = x[start:stop]
    block = (
        block.detach().cpu()
        if isinstance(block, torch.Tensor)
        else torch.from_numpy(np.array(block))
    )
    return F.normalize(block.double(), dim=-1)


@torch.no_grad()
def modality_gap(
    image_emb: torch.Tensor | np.ndarray,
    text_emb: torch.Tensor | np.ndarray,
    paired: bool = True,
    chunk_size: int = 65536,
) -> dict[str, Any]:
    """Centroid distance (the modality gap), gap vector and, for paired data, mean pair distance.

    Every embedding is L2-normalised first (the gap is defined on the unit sphere); computed in
    float64, chunk by chunk, so large embedding sets are never copied whole.

    Args:
        image_emb: (n_images, dim) image embeddings, torch or numpy, normalised or not.
        text_emb: (n_texts, dim) text embeddings.
        paired: If True, image_emb[i] and text_emb[i] are a pair (so n_images == n_texts) and the
            pairwise statistics are added. If False the two sets may differ in size.
        chunk_size: Rows processed at a time.

    Returns:
        {"centroid_distance": ||gap||, "gap_vector": gap (float64 CPU tensor of shape (dim,)),
        "image_centroid_norm", "text_centroid_norm"} and, when paired,
        {"mean_paired_distance": mean ||x_i - y_i||, "mean_paired_cosine": mean cos(x_i, y_i)}.
        All on the normalised embeddings.
    """
    images = _check(image_emb, "image_emb")
    texts = _check(text_emb, "text_emb")
    if images.shape[1] != texts.shape[1]:
        raise ValueError(f"embedding dims differ: images {images.shape[1]}, texts {texts.shape[1]}")
    if paired and images.shape[0] != texts.shape[0]:
        raise ValueError(
            f"paired=True needs as many texts as images ({texts.shape[0]} vs {images.shape[0]})"
        )

    def centroid(x: torch.Tensor | np.ndarray) -> torch.Tensor:
        total = torch.zeros(x.shape[1], dtype=torch.float64)
        for s in range(0, x.shape[0], chunk_size):
            total += _normalized_rows(x, s, s + chunk_size).sum(dim=0)
        return total / x.shape[0]

    image_centroid, text_centroid = centroid(images), centroid(texts)
    gap = image_centroid - text_centroid
    out: dict[str, Any] = {
        "centroid_distance": float(gap.norm()),
        "gap_vector": gap,
        "image_centroid_norm": float(image_centroid.norm()),
        "text_centroid_norm": float(text_centroid.norm()),
    }
    if paired:
        dist_sum, cos_sum = 0.0, 0.0
        for s in range(0, images.shape[0], chunk_size):
            x = _normalized_rows(images, s, s + chunk_size)
            y = _normalized_rows(texts, s, s + chunk_size)
            dist_sum += float((x - y).norm(dim=-1).sum())
            cos_sum += float((x * y).sum(dim=-1).sum())
        out["mean_paired_distance"] = dist_sum / images.shape[0]
        out["mean_paired_cosine"] = cos_sum / images.shape[0]
    return out


def modality_gap_metrics(
    image_emb: torch.Tensor | np.ndarray,
    text_emb: torch.Tensor | np.ndarray,
    text_image: Sequence[int] | None = None,
) -> dict[str, float]:
    """The gap numbers a report prints, for images with any number of captions each.

    The centroid distance takes every image once and every text once, so an image with five
    captions (COCO) weighs as much as one with a single caption; with `text_image` the pair
    statistics are over (text j, its image text_image[j]) pairs.

    Args:
        image_emb: (n_images, dim) image embeddings.
        text_emb: (n_texts, dim) text embeddings.
        text_image: Image index of each text, or None for an unpaired set (no pair statistics).

    Returns:
        {"modality_gap": centroid distance, "image_centroid_norm", "text_centroid_norm"} and,
        with `text_image`, {"mean_paired_distance", "mean_paired_cosine"}.
    """
    gap = modality_gap(image_emb, text_emb, paired=False)
    out = {
        "modality_gap": gap["centroid_distance"],
        "image_centroid_norm": gap["image_centroid_norm"],
        "text_centroid_norm": gap["text_centroid_norm"],
    }
    if text_image is not None:
        index = torch.as_tensor(list(text_image), dtype=torch.long)
        if len(index) != text_emb.shape[0]:
            raise ValueError(
                f"text_image: {len(index)} image indices for {text_emb.shape[0]} texts"
            )
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= image_emb.shape[0]):
            raise ValueError(f"text_image: indices must lie in [0, {image_emb.shape[0]})")
        if isinstance(image_emb, torch.Tensor):
            paired_images = image_emb.detach().cpu()[index]  # (n_texts, dim)
        else:
            paired_images = np.asarray(image_emb)[index.numpy()]
        pairs = modality_gap(paired_images, text_emb, paired=True)
        out["mean_paired_distance"] = pairs["mean_paired_distance"]
        out["mean_paired_cosine"] = pairs["mean_paired_cosine"]
    return out


__all__ = ["modality_gap", "modality_gap_metrics"]
