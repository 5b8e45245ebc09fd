"""The image-text cosine-similarity figure of OpenAI CLIP's "Interacting with CLIP" notebook.

Captions run down the left, image thumbnails along the top, and each cell holds the cosine
similarity of that caption and image, printed and colour-coded. A matching pair stands out as
the brightest cell of its column.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["similarity_figure", "similarity_figure_size"]

CELL_INCHES = 1.0  # each image column and caption row
_TOP, _BOTTOM, _RIGHT = 0.4, 0.15, 0.15  # margins in inches (title; edges)
_THUMBNAIL_ROWS = 1.15  # the thumbnail row and a gap, in cells


def _caption_margin(texts: Sequence[str]) -> float:
    """Inches left of the grid for the captions: about 0.08 inch per character, at most 4."""
    return min(0.3 + 0.08 * max(len(t) for t in texts), 4.0)


def similarity_figure_size(texts: Sequence[str], num_images: int) -> tuple[float, float]:
    """(width, height) in inches of `similarity_figure` for these captions and images."""
    width = _caption_margin(texts) + CELL_INCHES * num_images + _RIGHT
    height = _TOP + CELL_INCHES * (len(texts) + _THUMBNAIL_ROWS) + _BOTTOM
    return width, height


def similarity_figure(
    images: Sequence[Image.Image],
    texts: Sequence[str],
    similarity: torch.Tensor | np.ndarray,
    out_path: str | os.PathLike[str],
    title: str = "Cosine similarity between text and image features",
    vmin: float | None = None,
    vmax: float | None = None,
    dpi: int = 100,
) -> Path:
    """Draws the caption x image similarity grid with thumbnails and the values in the cells.

    The figure is `similarity_figure_size(texts, len(images))` inches at `dpi` pixels per inch.

    Args:
        images: The N_images images (shown as thumbnails, squashed to square cells).
        texts: The N_texts captions.
        similarity: (N_images, N_texts) cosine similarities (rows: images, as
            `CLIP.logits`), e.g. `image_embeds @ text_embeds.T` of normalised embeddings.
        out_path: PNG to write (parent directories are created).
        title: Figure title.
        vmin: Colour-scale minimum (default: the smallest value).
        vmax: Colour-scale maximum (default: the largest value).
        dpi: Pixels per inch.

    Returns:
        The written path.

    Raises:
        ValueError: `similarity` does not have shape (N_images, N_texts), or either is empty.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = torch.as_tensor(similarity).detach().float().cpu().numpy()
    if not images or not texts:
        raise ValueError("the similarity figure needs at least one image and one text")
    if values.shape != (len(images), len(texts)):
        raise ValueError(
            f"similarity has shape {values.shape}, expected ({len(images)}, {len(texts)}) "
            "(rows: images, columns: texts)"
        )
    grid = values.T  # (N_texts, N_images): captions down, images across, as in the notebook
    n_texts, n_images = grid.shape
    width, height = similarity_figure_size(texts, n_images)
    fig = plt.figure(figsize=(width, height))
    left = _caption_margin(texts)
    axis = fig.add_axes((left / width, _BOTTOM / height, n_images * CELL_INCHES / width,
                         (n_texts + _THUMBNAIL_ROWS) * CELL_INCHES / height))  # fmt: skip
    low = float(grid.min()) if vmin is None else vmin
    high = float(grid.max()) if vmax is None else vmax
    cmap = plt.get_cmap("viridis")
    axis.imshow(grid, cmap=cmap, vmin=low, vmax=high, aspect="auto",
                extent=(-0.5, n_images - 0.5, n_texts - 0.5, -0.5))  # fmt: skip
    for column, image in enumerate(images):
        thumbnail = np.asarray(image.convert("RGB"))
        top = -0.5 - 0.05
        axis.imshow(thumbnail, extent=(column - 0.45, column + 0.45, top, top - 0.9),
                    aspect="auto")  # fmt: skip
    span = high - low if high > low else 1.0
    for row in range(n_texts):
        for column in range(n_images):
            value = grid[row, column]
            # Dark text on the bright end of viridis, light text on the dark end.
            colour = "black" if (value - low) / span > 0.6 else "white"
            axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=11,
                      color=colour)  # fmt: skip
    axis.set_xlim(-0.5, n_images - 0.5)
    axis.set_ylim(n_texts - 0.5, -0.5 - _THUMBNAIL_ROWS)
    axis.set_xticks([])
    axis.set_yticks(range(n_texts), list(texts), fontsize=11)
    axis.tick_params(length=0)
    for side in ("left", "top", "right", "bottom"):
        axis.spines[side].set_visible(False)
    fig.suptitle(title, fontsize=12, y=1 - 0.1 / height, va="top")
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
