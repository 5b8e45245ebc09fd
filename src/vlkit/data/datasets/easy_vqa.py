"""easy-VQA as an image-caption dataset for contrastive training.

easy-VQA (Victor Zhou, https://github.com/vzhou842/easy-VQA, PyPI package `easy_vqa`) ships
4,000 train and 1,000 test 64x64 PNGs, each showing one shape (circle, rectangle or triangle)
in one of 8 colours, with template questions about it. It has no caption or label file, so
each image's (colour, shape) is derived here from its question/answer pairs:

- direct evidence: "what color is the shape?" -> "blue", "what shape is present?" ->
  "circle", "what is the blue shape?" -> "rectangle" (gives both), "what color is the
  triangle?" -> "red" (gives both);
- yes/no questions: "is there a red shape?" -> "yes" fixes the colour, -> "no" rules it out;
  negated forms ("is there not ...", "does the image not contain ...", "is no ... present?")
  flip the answer.

Every piece of evidence narrows a candidate set (8 colours, 3 shapes). The questions alone leave
some images open (7% of the train images have no question that pins their colour, e.g. only
"is there a green shape?" -> "no"; 4% their shape), so the rest is read from the pixels,
which easy-VQA draws in a fixed palette (its `color.py`: red = (255, 0, 0), teal =
(0, 128, 128), ...) over a light, slightly tinted background:

- colour: the palette colour with the most exactly matching pixels;
- shape: within the bounding box of those pixels, a rectangle fills it completely; a circle is
  mirror-symmetric both ways (>= 0.82 of the box's pixels agree with each flip on the real
  data) and a triangle is not (<= 0.54).

The pixel reading must fall inside the question-derived candidates; on every image whose
questions alone decide (about 4,500 of the 5,000) it agrees with them (`tests/test_demo.py`). An image
whose evidence contradicts itself, or that is left with more or fewer than one colour or shape,
raises `LabelDerivationError` naming the image.

The 24 classes are every colour x shape pair in a fixed order (`COLORS` major, `SHAPES` minor),
so class index = `COLORS.index(colour) * len(SHAPES) + SHAPES.index(shape)`.
"""

from __future__ import annotations

import functools
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

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

# Fixed orders: the class index and the saved class list depend on them. Colours are the
# colour answers of easy_vqa's answers.txt, shapes its shape answers, both alphabetical.
COLORS: tuple[str, ...] = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")
SHAPES: tuple[str, ...] = ("circle", "rectangle", "triangle")
CLASS_NAMES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)

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

# easy-VQA's drawing palette (easy-VQA repository, color.py).
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "blue": (0, 0, 255),
    "brown": (165, 42, 42),
    "gray": (128, 128, 128),
    "green": (0, 255, 0),
    "red": (255, 0, 0),
    "teal": (0, 128, 128),
    "yellow": (255, 255, 0),
}
# Shape thresholds (see the module docstring): measured ranges on all 5,000 images are
# rectangle fill 1.0; circle symmetry 0.82-0.98, triangle 0.40-0.54, so 0.7 sits in the gap.
_RECTANGLE_FILL = 0.99
_CIRCLE_SYMMETRY = 0.7

_COLOR_RE = "|".join(COLORS)
_SHAPE_RE = "|".join(SHAPES)
# Open questions whose answer is a colour or a shape, and what the question itself names.
_WHAT_COLOR = re.compile(
    rf"^what (?:color is the|is the color of the) (?P<shape>shape|{_SHAPE_RE})\?$"
)
_WHAT_SHAPE = re.compile(
    rf"^what (?:shape is in the image|shape does the image contain|shape is present"
    rf"|is the (?P<color>{_COLOR_RE}) shape)\?$"
)
# Yes/no questions: (pattern, negated). The object is "<colour> shape" or "<shape>".
_OBJECT = rf"(?:(?P<color>{_COLOR_RE}) shape|(?P<shape>{_SHAPE_RE}))"
_YES_NO = (
    (re.compile(rf"^is there an? {_OBJECT}(?: in the image)?\?$"), False),
    (re.compile(rf"^does the image contain an? {_OBJECT}\?$"), False),
    (re.compile(rf"^is an? {_OBJECT} present\?$"), False),
    (re.compile(rf"^is there not an? {_OBJECT}(?: in the image)?\?$"), True),
    (re.compile(rf"^does the image not contain an? {_OBJECT}\?$"), True),
    (re.compile(rf"^is no {_OBJECT} present\?$"), True),
)


class LabelDerivationError(ValueError):
    """An image's questions do not determine exactly one colour and one shape."""


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


def class_index(color: str, shape: str) -> int:
    """Index of ("red", "circle") in `CLASS_NAMES`."""
    return COLORS.index(color) * len(SHAPES) + SHAPES.index(shape)


class _Candidates:
    """The colours and shapes still possible for one image."""

    def __init__(self) -> None:
        self.colors = set(COLORS)
        self.shapes = set(SHAPES)

    def fix(self, kind: str, value: str) -> None:
        getattr(self, kind).intersection_update({value})

    def exclude(self, kind: str, value: str) -> None:
        getattr(self, kind).discard(value)


def _apply(candidates: _Candidates, question: str, answer: str) -> bool:
    """Narrows `candidates` with one question/answer pair; False if the question is unknown."""
    question, answer = question.strip().lower(), answer.strip().lower()
    if match := _WHAT_COLOR.match(question):
        candidates.fix("colors", answer)
        if match["shape"] != "shape":
            candidates.fix("shapes", match["shape"])
        return True
    if match := _WHAT_SHAPE.match(question):
        candidates.fix("shapes", answer)
        if match["color"]:
            candidates.fix("colors", match["color"])
        return True
    for pattern, negated in _YES_NO:
        if match := pattern.match(question):
            if answer not in ("yes", "no"):
                return False
            present = (answer == "yes") != negated
            kind, value = (
                ("colors", match["color"]) if match["color"] else ("shapes", match["shape"])
            )
            (candidates.fix if present else candidates.exclude)(kind, value)
            return True
    return False


def pixel_label(image: str | os.PathLike[str] | np.ndarray) -> tuple[str, str]:
    """Reads (colour, shape) off an easy-VQA image's pixels (see the module docstring).

    Args:
        image: A PNG path, or an (H, W, 3) uint8 RGB array.

    Raises:
        LabelDerivationError: No pixel has a palette colour.
    """
    if isinstance(image, np.ndarray):
        pixels = image
    else:
        pixels = np.asarray(load_image(image), dtype=np.uint8)
    masks = {
        c: (pixels == np.array(rgb, dtype=np.uint8)).all(axis=-1) for c, rgb in PALETTE.items()
    }
    color = max(masks, key=lambda c: int(masks[c].sum()))
    mask = masks[color]
    if not mask.any():
        raise LabelDerivationError(
            f"{image if not isinstance(image, np.ndarray) else 'image'}: "
            "no pixel has an easy-VQA palette colour"
        )
    rows, cols = np.nonzero(mask)
    box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    if box.mean() >= _RECTANGLE_FILL:
        return color, "rectangle"
    symmetry = min((box == box[::-1]).mean(), (box == box[:, ::-1]).mean())
    return color, "circle" if symmetry >= _CIRCLE_SYMMETRY else "triangle"


def derive_labels(
    questions: Sequence[str],
    answers: Sequence[str],
    image_ids: Sequence[int],
    image_paths: Mapping[int, str | os.PathLike[str]] | None = None,
) -> dict[int, tuple[str, str]]:
    """Each image's (colour, shape) from its easy-VQA questions and answers (and pixels).

    Args:
        questions: Question strings, as `easy_vqa.get_train_questions()[0]`.
        answers: The answers, aligned with `questions`.
        image_ids: The image each question is about, aligned with `questions`.
        image_paths: image id -> PNG path. Where the questions leave an image's colour or
            shape open, it is read from the pixels (`pixel_label`); without paths that raises.

    Returns:
        image id -> (colour, shape), for every id in `image_ids`.

    Raises:
        LabelDerivationError: A question has an unknown form, the evidence for an image
            contradicts itself, or its colour or shape stays undetermined.
    """
    if not len(questions) == len(answers) == len(image_ids):
        raise ValueError(
            f"questions, answers and image_ids differ in length: "
            f"{len(questions)}, {len(answers)}, {len(image_ids)}"
        )
    candidates: dict[int, _Candidates] = {}
    for question, answer, image_id in zip(questions, answers, image_ids, strict=True):
        state = candidates.setdefault(int(image_id), _Candidates())
        if not _apply(state, question, answer):
            raise LabelDerivationError(
                f"image {image_id}: unrecognised question/answer {question!r} -> {answer!r}"
            )
    labels = {}
    for image_id, state in sorted(candidates.items()):
        for kind, values in (("colour", state.colors), ("shape", state.shapes)):
            if not values:
                raise LabelDerivationError(
                    f"easy-VQA image {image_id}: contradictory answers about its {kind}"
                )
        if len(state.colors) > 1 or len(state.shapes) > 1:
            if image_paths is None or image_id not in image_paths:
                open_ = "colour" if len(state.colors) > 1 else "shape"
                raise LabelDerivationError(
                    f"easy-VQA image {image_id}: its questions leave the {open_} undetermined "
                    "and no image file was given to read it from"
                )
            color, shape = pixel_label(image_paths[image_id])
            if color not in state.colors or shape not in state.shapes:
                raise LabelDerivationError(
                    f"easy-VQA image {image_id}: the pixels say {color} {shape}, the questions "
                    f"allow colours {sorted(state.colors)} and shapes {sorted(state.shapes)}"
                )
            state.fix("colors", color)
            state.fix("shapes", shape)
        labels[image_id] = (next(iter(state.colors)), next(iter(state.shapes)))
    return labels


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
