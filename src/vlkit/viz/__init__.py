"""Visualisations: attention overlays on images."""

from vlkit.viz.attention import attention_grid, save_attention_overlays

__all__ = ["attention_grid", "save_attention_overlays"]
