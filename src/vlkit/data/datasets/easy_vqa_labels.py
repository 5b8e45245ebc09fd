"""easy-VQA's labels: each image's (colour, shape), derived from its questions and pixels.

easy-VQA (Victor Zhou, https://github.com/vzhou842/easy-VQA, PyPI package `easy_vqa`) has no
caption or label file, so each image's (colour, shape) is derived here from its question/answer
pairs:

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

import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from vlkit.data.images import load_image

__all__ = [
    "CLASS_NAMES",
    "COLORS",
    "PALETTE",
    "SHAPES",
    "LabelDerivationError",
    "class_index",
    "derive_labels",
    "pixel_label",
]

# Fixed orders: the class index and the saved class list depend on them. Colours are the
# colour answers of easy_vqa's answers.txt, shapes its shape answers, both alphabetical.
COLORS: tuple[str, ...] = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")
SHAPES: tuple[str, ...] = ("circle", "rectangle", "triangle")
CLASS_NAMES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)


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
