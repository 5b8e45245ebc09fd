"""Datasets: image-caption-label collections for training and evaluation."""

from vlkit.data.datasets.easy_vqa import (
    CAPTION_TEMPLATES,
    CLASS_NAMES,
    COLORS,
    SHAPES,
    EasyVQACaptions,
    EasyVQAExample,
    LabelDerivationError,
    class_index,
    derive_labels,
    load_easy_vqa,
)

__all__ = [
    "CAPTION_TEMPLATES",
    "CLASS_NAMES",
    "COLORS",
    "SHAPES",
    "EasyVQACaptions",
    "EasyVQAExample",
    "LabelDerivationError",
    "class_index",
    "derive_labels",
    "load_easy_vqa",
]
