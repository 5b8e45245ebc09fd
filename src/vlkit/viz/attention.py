"""Attention over image tokens, drawn as heat-map overlays on the image (matplotlib).

A generative VLM's `attention_maps` gives, for each text position, a distribution over the
vision encoder's T image tokens. Those tokens come from a square grid of patches (a ViT may add
a leading class token, which has no place in the image and is dropped here), so each
distribution is reshaped to its grid, upsampled to the image size and blended over it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["attention_grid", "save_attention_overlays"]


def attention_grid(weights: torch.Tensor) -> np.ndarray:
    """(T,) weights over image tokens -> (g, g) grid (a leading class token is dropped).

    Raises:
        ValueError: T is neither a square nor a square plus one.
    """
    weights = weights.detach().float().cpu().flatten()
    t = weights.numel()
    side = math.isqrt(t)
    if side * side != t:
        side = math.isqrt(t - 1)
        if side * side != t - 1:
            raise ValueError(f"{t} image tokens do not form a square grid (with or without CLS)")
        weights = weights[1:]
    return weights.reshape(side, side).numpy()


def save_attention_overlays(
    image: Image.Image,
    maps: torch.Tensor,
    labels: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "",
    columns: int = 8,
) -> Path:
    """One panel per generated token: the image with its attention over image tokens on top.

    Args:
        image: The input image (shown as given).
        maps: (N, T) attention of N generated tokens over the T image tokens.
        labels: N panel titles (the generated tokens).
        path: PNG to write (parent directories are created).
        title: Figure title (e.g. the prompt).
        columns: Panels per row (the figure wraps onto more rows).

    Returns:
        The written path.

    Raises:
        ValueError: `maps` and `labels` disagree in length.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if maps.dim() != 2 or maps.shape[0] != len(labels):
        raise ValueError(f"maps {tuple(maps.shape)} must be (N, T) with N = {len(labels)} labels")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = len(labels) + 1
    cols = min(panels, columns)
    rows = math.ceil(panels / cols)
    fig, grid_axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    axes = grid_axes.reshape(1, -1)  # panels in reading order
    rgb = np.asarray(image.convert("RGB"))
    axes[0, 0].imshow(rgb)
    axes[0, 0].set_title("image", fontsize=9)
    for i, label in enumerate(labels):
        grid = attention_grid(maps[i])
        # Nearest upsampling keeps the token cells visible: the map has no finer detail.
        heat = np.kron(
            grid, np.ones((rgb.shape[0] // grid.shape[0], rgb.shape[1] // grid.shape[1]))
        )
        axis = axes[0, i + 1]
        axis.imshow(rgb)
        axis.imshow(heat, cmap="inferno", alpha=0.55, extent=(0, rgb.shape[1], rgb.shape[0], 0))
        axis.set_title(repr(label), fontsize=9)
    for axis in axes[0]:
        axis.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
