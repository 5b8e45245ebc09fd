"""easy-VQA as an image-caption dataset for contrastive training.

easy-VQA (Victor Zhou, https://github.com/vzhou842/easy-VQA, PyPI package `easy_vqa`) ships
4,000 train and 1,000 test 64x64 PNGs, each showing one shape (circle, rectangle or triangle)
in one of 8 colours, with template questions about it. It has no caption or label file: each
image's (colour, shape) is derived from its question/answer pairs and pixels
(`easy_vqa_labels.py`), giving 24 classes (`CLASS_NAMES`), captioned with `CAPTION_TEMPLATES`.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from vlkit.data.datasets.easy_vqa_labels import (
    CLASS_NAMES,
    COLORS,
    SHAPES,
    LabelDerivationError,
    class_index,
    derive_labels,
    pixel_label,
)
from vlkit.data.datasets.image_text import parse_key
from vlkit.data.images import ImageLoadError, load_image

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
    "pixel_label",
]

# Caption phrasings, each with one "{}" for "<colour> <shape>". Training picks one per sample;
# the same list serves as the zero-shot prompt ensemble.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {}",
    "a {}.",
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a {} on a plain background",
    "a {} on a white background",
    "a simple {} shape",
    "the shape is a {}",
    "there is a {} in the image",
    "a small {}",
    "a large {}",
)
CANONICAL_TEMPLATE = "a {}"


@dataclass(frozen=True)
class EasyVQAExample:
    """One easy-VQA image with its derived label.

    Attributes:
        image_id: easy-VQA's integer id within its split.
        path: The PNG file.
        color: One of `COLORS`.
        shape: One of `SHAPES`.
    """

    image_id: int
    path: str
    color: str
    shape: str

    @property
    def label(self) -> int:
        """Index into `CLASS_NAMES`."""
        return class_index(self.color, self.shape)

    @property
    def class_name(self) -> str:
        """ "<colour> <shape>", e.g. "red circle"."""
        return f"{self.color} {self.shape}"


def load_easy_vqa(split: str = "train") -> list[EasyVQAExample]:
    """The labelled images of one easy-VQA split, sorted by image id (cached per process).

    Args:
        split: "train" (4,000 images) or "test" (1,000 images).

    Raises:
        ImportError: The `easy_vqa` package is not installed.
        LabelDerivationError: Some image's label cannot be derived (see `derive_labels`);
            also raised when an image has no questions at all or a question's image no file.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return list(_load_split(split))


def read_easy_vqa(split: str) -> tuple[list, list, list, dict[int, str]]:
    """The raw easy-VQA split: questions, answers, image ids (parallel lists) and image paths."""
    try:
        import easy_vqa
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the easy-VQA dataset needs the `easy_vqa` package: pip install easy-vqa"
        ) from error
    if split == "train":
        questions, answers, ids = easy_vqa.get_train_questions()
        return questions, answers, ids, easy_vqa.get_train_image_paths()
    questions, answers, ids = easy_vqa.get_test_questions()
    return questions, answers, ids, easy_vqa.get_test_image_paths()


@functools.lru_cache(maxsize=2)
def _load_split(split: str) -> tuple[EasyVQAExample, ...]:
    # Parsing the questions and reading the pixels of the few hundred images they leave open
    # takes a second or two; the result never changes within a process.
    questions, answers, ids, paths = read_easy_vqa(split)
    labels = derive_labels(questions, answers, ids, paths)
    unlabelled = sorted(set(paths) - set(labels))
    if unlabelled:
        raise LabelDerivationError(
            f"easy-VQA {split}: {len(unlabelled)} images have no questions, e.g. {unlabelled[:5]}"
        )
    missing = sorted(set(labels) - set(paths))
    if missing:
        raise LabelDerivationError(
            f"easy-VQA {split}: questions refer to images without files, e.g. {missing[:5]}"
        )
    return tuple(EasyVQAExample(i, str(paths[i]), *labels[i]) for i in sorted(labels))


def caption(class_name: str, template: str = CANONICAL_TEMPLATE) -> str:
    """Formats a caption, e.g. `caption("red circle", "a photo of a {}.")`."""
    return template.format(class_name)


class EasyVQACaptions(Dataset):
    """easy-VQA images with captions, in the sample contract of `vlkit.data.datasets.image_text`.

    Items are dicts `{"image": (3, S, S) float, "text": (L,) long, "index": int, "label": int}`
    (`label` is the class index into `CLASS_NAMES`), or `{"skipped": reason, "index": int}` when
    the image file cannot be read, so `vlkit.data.collate.collate_image_text` batches them.

    Which caption phrasing an item gets:

    - key `(index, sample_seed)` (the trainer's `ResumableBatchSampler`): phrasing and the
      transform's random crop come from `torch.Generator().manual_seed(sample_seed)`, so the
      sample is a pure function of the key whatever the worker or resume point;
    - plain `index` with a dataset `seed`: the phrasing is a function of (seed, epoch, index)
      (`set_epoch` changes it), for a plain shuffled DataLoader;
    - plain `index` with `seed=None`: always the canonical "a <colour> <shape>" (evaluation).

    Args:
        split: "train" or "test".
        transform: PIL image -> float tensor (3, S, S), e.g. `vlkit.get_transform(model)`;
            called with `generator=` for keyed samples (as `ImageTransform` accepts).
        tokenizer: list of texts -> LongTensor (N, L), e.g. `vlkit.get_tokenizer(model)`.
        seed: Dataset seed for plain-index phrasing draws, or None for canonical captions.
        templates: Caption phrasings with one "{}" for "<colour> <shape>"; the first is the
            canonical one.
        examples: Use these examples instead of loading `split` (e.g. a subset).
    """

    def __init__(
        self,
        split: str = "train",
        transform: Callable[..., torch.Tensor] | None = None,
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        seed: int | None = 0,
        templates: Sequence[str] = CAPTION_TEMPLATES,
        examples: Sequence[EasyVQAExample] | None = None,
    ) -> None:
        if transform is None or tokenizer is None:
            raise ValueError("EasyVQACaptions needs a transform and a tokenizer")
        if not templates or any("{}" not in t for t in templates):
            raise ValueError("templates must be non-empty, each with a '{}' placeholder")
        self.examples = list(examples) if examples is not None else load_easy_vqa(split)
        self.transform = transform
        self.templates = tuple(templates)
        self.seed = seed
        self.epoch = 0
        # Every caption is one of len(CLASS_NAMES) x len(templates) strings: tokenize them once.
        texts = [t.format(name) for name in CLASS_NAMES for t in self.templates]
        ids = torch.as_tensor(tokenizer(texts), dtype=torch.long)
        self.caption_tokens = ids.view(len(CLASS_NAMES), len(self.templates), -1)

    @property
    def labels(self) -> torch.Tensor:
        """Class index of every item (N,)."""
        return torch.tensor([e.label for e in self.examples], dtype=torch.long)

    def set_epoch(self, epoch: int) -> None:
        """Changes the plain-index phrasing draw (see the class docstring)."""
        self.epoch = int(epoch)

    def _template(self, index: int, generator: torch.Generator | None) -> int:
        if generator is not None:
            return int(torch.randint(len(self.templates), (1,), generator=generator))
        if self.seed is None:
            return 0
        # A string seed goes through SHA-512 in `random.Random`: stable across processes,
        # unlike `hash()`.
        rng = random.Random(f"vlkit-easy-vqa:{self.seed}:{self.epoch}:{index}")
        return rng.randrange(len(self.templates))

    def caption(self, key: int | tuple[int, int]) -> str:
        """The caption text item `key` gets (same draw as `__getitem__`)."""
        index, sample_seed = parse_key(key, len(self))
        generator = None if sample_seed is None else torch.Generator().manual_seed(sample_seed)
        template = self.templates[self._template(index, generator)]
        return template.format(self.examples[index].class_name)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, sample_seed = parse_key(key, len(self))
        example = self.examples[index]
        generator = None if sample_seed is None else torch.Generator().manual_seed(sample_seed)
        # Caption first, then the crop: the order of draws from `generator` is fixed.
        tokens = self.caption_tokens[example.label, self._template(index, generator)]
        try:
            image = load_image(example.path)
        except ImageLoadError as error:
            return {"skipped": str(error).splitlines()[0], "index": index}
        pixels = (
            self.transform(image)
            if generator is None
            else self.transform(image, generator=generator)
        )
        return {"image": pixels, "text": tokens, "index": index, "label": example.label}
