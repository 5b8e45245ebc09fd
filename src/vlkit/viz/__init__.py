"""Visualisations: attention overlays, CLIP relevance maps and similarity grids."""

from vlkit.viz.attention import attention_grid, save_attention_overlays
from vlkit.viz.relevance import (
    attention_rollout,
    relevance_overlay,
    rollout_matrix,
    text_image_relevance,
)
from vlkit.viz.similarity import similarity_figure

__all__ = [
    "attention_grid",
    "attention_rollout",
    "relevance_overlay",
    "rollout_matrix",
    "save_attention_overlays",
    "similarity_figure",
    "text_image_relevance",
]
