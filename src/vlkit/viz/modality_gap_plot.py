"""Image and text embeddings in a 2-D PCA projection: the picture of the modality gap.

Liang et al. 2022 ("Mind the Gap", arXiv:2203.02053, Fig. 1) show CLIP's L2-normalised image and
text embeddings as two separate clouds after a joint projection to two dimensions. This module
draws that picture: the unit embeddings of both modalities are projected with one PCA fitted on
the two sets together (so the axes are shared by images and texts), each modality's centroid is
marked, and a few (text, image) pairs are joined by faint lines. One panel per model: before and
after training side by side.

The projection is PCA through `torch.linalg.svd` (no scikit-learn); signs follow scikit-learn's
`svd_flip` convention (the largest-magnitude loading of each component is positive) so that the
same embeddings always give the same picture. The distance drawn between the projected centroids
is only the part of the gap that lies in the two kept directions; the titles quote the true
centroid distance, computed in the full embedding space.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["GapPanel", "modality_gap_figure", "pca_2d"]

MAX_PAIR_LINES = 100  # more lines hide the clouds


def pca_2d(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two principal components of (N, D) points.

    Returns:
        (projected (N, 2) float64, explained variance ratio of the two components (2,)).
    """
    x = points.detach().cpu().double()
    centred = x - x.mean(dim=0, keepdim=True)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (k, D)
    components = vh[:2]
    if components.shape[0] < 2:  # a single point or a 1-D embedding: pad with zeros
        components = torch.cat([components, torch.zeros(2 - components.shape[0], x.shape[1],
                                                        dtype=x.dtype)])  # fmt: skip
    # svd_flip: make the largest-|loading| entry of each component positive.
    largest = components.abs().argmax(dim=1)
    signs = torch.sign(components[torch.arange(2), largest])
    components = components * torch.where(signs == 0, torch.ones_like(signs), signs)[:, None]
    variance = singular**2
    total = float(variance.sum())
    ratio = torch.zeros(2, dtype=torch.float64)
    if total > 0:
        kept = variance[:2] / total
        ratio[: len(kept)] = kept
    return centred @ components.T, ratio


@dataclass
class GapPanel:
    """One model's embeddings for the figure.

    Attributes:
        title: The panel's name (e.g. "before training").
        image_emb: (n_images, D) image embeddings (normalised here).
        text_emb: (n_texts, D) text embeddings.
        text_image: Image index of each text (the pairs drawn as lines), or None.
        centroid_distance: The modality gap in the full space, quoted in the title.
    """

    title: str
    image_emb: torch.Tensor
    text_emb: torch.Tensor
    text_image: Sequence[int] | None
    centroid_distance: float


def modality_gap_figure(panels: Sequence[GapPanel], path: str | os.PathLike[str]) -> list[float]:
    """Draws one PCA panel per model into a PNG at `path`.

    Returns:
        For each panel, the explained variance ratio of the two drawn components, summed.
    """
    # Imported here: matplotlib is only needed to draw; Agg renders without a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2 * len(panels), 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    explained = []
    for k, panel in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), k + 1)
        images = F.normalize(panel.image_emb.detach().cpu().double(), dim=-1)
        texts = F.normalize(panel.text_emb.detach().cpu().double(), dim=-1)
        projected, ratio = pca_2d(torch.cat([images, texts]))
        p_img, p_txt = projected[: len(images)].numpy(), projected[len(images) :].numpy()
        if panel.text_image is not None:
            for j, i in list(enumerate(panel.text_image))[:MAX_PAIR_LINES]:
                ax.plot(*np.stack([p_txt[j], p_img[i]]).T, color="grey", lw=0.4, alpha=0.3)
        ax.scatter(*p_img.T, s=9, alpha=0.6, color="tab:blue", label=f"images ({len(p_img)})")
        ax.scatter(*p_txt.T, s=9, alpha=0.6, marker="^", color="tab:orange",
                   label=f"texts ({len(p_txt)})")  # fmt: skip
        c_img, c_txt = p_img.mean(axis=0), p_txt.mean(axis=0)
        ax.plot(*np.stack([c_img, c_txt]).T, color="black", lw=1.5)
        ax.scatter(*c_img, s=160, marker="X", color="navy", edgecolor="white", zorder=3,
                   label="image centroid")  # fmt: skip
        ax.scatter(*c_txt, s=160, marker="X", color="darkred", edgecolor="white", zorder=3,
                   label="text centroid")  # fmt: skip
        ax.set_title(f"{panel.title}\ncentroid distance {panel.centroid_distance:.3f} "
                     "(full space)", fontsize=10)  # fmt: skip
        ax.set_xlabel(f"PC1 ({100 * float(ratio[0]):.0f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * float(ratio[1]):.0f}% of variance)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        explained.append(float(ratio.sum()))
    figure.suptitle("Modality gap: unit image and text embeddings, joint 2-D PCA")
    figure.savefig(path, dpi=100, format="png")  # `path` may be a temporary name (atomic write)
    return explained
