"""Synthetic compositional scenes: coloured shapes on a 3x3 grid, with captions, QA and depth.

A scene holds 1 to `max_objects` objects, each a (shape, colour, size) in its own grid cell,
and no two objects share both colour and shape, so "the red circle" always names one object.
Everything is drawn from one `random.Random`, so a scene is a pure function of its seed.
Relations are defined on grid cells, which makes them unambiguous: A is *left of* B when A's
column is smaller, *above* B when A's row is smaller.

- `generate_scene` draws a scene and renders it (`render_scene`, no anti-aliasing: every
  object pixel has exactly its palette colour);
- `caption` describes it in one of several phrasings (all objects, a count, a spatial
  relation, or one object's position); with `rng=None` it gives the canonical "list"
  phrasing;
- `questions` lists QA pairs (counting, colour, shape, size, existence, spatial);
- `render_depth` gives a per-object depth map for RGB+depth pairs (background 1.0 = far, each
  object a constant depth in [0.2, 0.8]).

`vlkit.data.datasets.shapes.ShapesDataset` serves these scenes as an image-text dataset.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "BACKGROUND",
    "GRID",
    "SCENE_COLORS",
    "SCENE_SHAPES",
    "SIZES",
    "SceneObject",
    "caption",
    "describe",
    "generate_scene",
    "questions",
    "render_depth",
    "render_scene",
]

SCENE_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
SCENE_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 0),
    "yellow": (235, 210, 0),
    "green": (30, 160, 50),
    "blue": (30, 80, 230),
    "purple": (140, 50, 190),
    "pink": (245, 120, 190),
    "brown": (130, 80, 30),
}
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUND: tuple[int, int, int] = (240, 240, 240)
GRID = 3
# Object radius as a fraction of a grid cell's side. A large object (diameter 0.9 cell) stays
# inside its cell, so objects never overlap and relations stay readable from the pixels.
_RADIUS = {"small": 0.25, "large": 0.45}
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_CELL_PHRASES = (
    ("in the top left corner", "at the top", "in the top right corner"),
    ("on the left", "in the center", "on the right"),
    ("in the bottom left corner", "at the bottom", "in the bottom right corner"),
)
_PREFIXES = ("", "a picture of ", "an image showing ")


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene.

    Attributes:
        shape: One of `SCENE_SHAPES`.
        color: One of `SCENE_COLORS`.
        size: "small" or "large".
        row: Grid row, 0 (top) to 2.
        col: Grid column, 0 (left) to 2.
        x: Centre, in pixels from the left.
        y: Centre, in pixels from the top.
        radius: Radius of the circle the shape is drawn in, in pixels.
        depth: Distance in [0.2, 0.8] (background: 1.0), for `render_depth`.
    """

    shape: str
    color: str
    size: str
    row: int
    col: int
    x: float
    y: float
    radius: float
    depth: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the fields."""
        return asdict(self)


def describe(obj: SceneObject) -> str:
    """`"<size> <colour> <shape>"`, e.g. "large red circle"."""
    return f"{obj.size} {obj.color} {obj.shape}"


def generate_scene(
    rng: random.Random, image_size: int = 64, max_objects: int = 3, min_objects: int = 1
) -> tuple[Image.Image, list[SceneObject]]:
    """Draws and renders a random scene.

    Args:
        rng: Source of all randomness (the scene is a function of its state).
        image_size: Side of the square image, at least 24 pixels.
        max_objects: Most objects in the scene (at most 9, one per grid cell).
        min_objects: Fewest objects.

    Returns:
        The RGB image and its objects, sorted by grid cell (row-major).
    """
    if image_size < 24:
        raise ValueError(f"image_size must be at least 24, got {image_size}")
    if not 1 <= min_objects <= max_objects <= GRID * GRID:
        raise ValueError(
            f"need 1 <= min_objects <= max_objects <= {GRID * GRID}, "
            f"got {min_objects}, {max_objects}"
        )
    count = rng.randint(min_objects, max_objects)
    cells = sorted(rng.sample(range(GRID * GRID), count))
    kinds = rng.sample([(c, s) for c in SCENE_COLORS for s in SCENE_SHAPES], count)
    cell = image_size / GRID
    objects = []
    for index, (color, shape) in zip(cells, kinds, strict=True):
        row, col = divmod(index, GRID)
        size = rng.choice(SIZES)
        radius = _RADIUS[size] * cell
        # Jitter inside the cell, keeping a pixel of margin so neighbours never touch.
        slack = max(0.0, cell / 2 - radius - 1.0)
        x = (col + 0.5) * cell + rng.uniform(-slack, slack)
        y = (row + 0.5) * cell + rng.uniform(-slack, slack)
        depth = round(rng.uniform(0.2, 0.8), 3)
        objects.append(SceneObject(shape, color, size, row, col, x, y, radius, depth))
    return render_scene(objects, image_size), objects


def _outline(obj: SceneObject) -> list[tuple[float, float]] | None:
    """Polygon vertices of a shape (None for a circle, drawn as an ellipse)."""
    x, y, r = obj.x, obj.y, obj.radius
    if obj.shape == "circle":
        return None
    if obj.shape == "square":
        half = r * 0.85  # about the circle's area, so "large" looks equally large for all shapes
        return [
            (x - half, y - half),
            (x + half, y - half),
            (x + half, y + half),
            (x - half, y + half),
        ]
    if obj.shape == "triangle":
        # Equilateral, pointing up, inscribed in the circle (centroid at the centre).
        angles = (-90.0, 30.0, 150.0)
        return [
            (x + r * math.cos(math.radians(a)), y + r * math.sin(math.radians(a))) for a in angles
        ]
    if obj.shape == "star":
        points = []
        for k in range(10):
            reach = r if k % 2 == 0 else r * 0.45
            angle = math.radians(-90.0 + 36.0 * k)
            points.append((x + reach * math.cos(angle), y + reach * math.sin(angle)))
        return points
    raise ValueError(f"unknown shape {obj.shape!r}")


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, fill: Any) -> None:
    outline = _outline(obj)
    if outline is None:
        r = obj.radius
        draw.ellipse((obj.x - r, obj.y - r, obj.x + r, obj.y + r), fill=fill)
    else:
        draw.polygon(outline, fill=fill)


def render_scene(objects: Sequence[SceneObject], image_size: int = 64) -> Image.Image:
    """Draws objects on the plain background (RGB, no anti-aliasing)."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        _draw(draw, obj, SCENE_COLORS[obj.color])
    return image


def render_depth(objects: Sequence[SceneObject], image_size: int = 64) -> np.ndarray:
    """A depth map: 1.0 (far) on the background, each object's `depth` on its pixels.

    Args:
        objects: The scene's objects.
        image_size: Side of the square map (same as the scene image for aligned pairs).

    Returns:
        A float32 array `(image_size, image_size)`, covering exactly the scene's object pixels.
    """
    depth = np.ones((image_size, image_size), dtype=np.float32)
    for obj in objects:
        mask = Image.new("L", (image_size, image_size), 0)
        _draw(ImageDraw.Draw(mask), obj, 255)
        depth[np.asarray(mask) > 0] = obj.depth
    return depth


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _relations(objects: Sequence[SceneObject]) -> list[tuple[SceneObject, str, SceneObject]]:
    """Every true (a, relation, b) with relation in left of / right of / above / below."""
    found = []
    for a in objects:
        for b in objects:
            if a is b:
                continue
            if a.col < b.col:
                found.append((a, "to the left of", b))
            if a.col > b.col:
                found.append((a, "to the right of", b))
            if a.row < b.row:
                found.append((a, "above", b))
            if a.row > b.row:
                found.append((a, "below", b))
    return found


def caption(objects: Sequence[SceneObject], rng: random.Random | None = None) -> str:
    """Describes a scene in words, truthfully.

    Phrasings (picked with `rng`; with `rng=None` always the first, listing every object):
    - list: "a large red circle, a small blue square and a small green star" (left to right);
    - count: "three shapes: a large red circle, ...";
    - relation: "a large red circle to the left of a small blue square" (also right of,
      above, below), when two objects sit in different rows or columns;
    - position: "a small green star in the top right corner" (one object, by its cell).
    With `rng`, the phrasing may get a prefix ("a picture of ", "an image showing ").

    Args:
        objects: The scene's objects.
        rng: Source of the phrasing choice, or None for the canonical caption.

    Returns:
        The caption.
    """
    if not objects:
        return "an empty picture"
    ordered = sorted(objects, key=lambda o: (o.col, o.row))
    listed = _join([f"a {describe(o)}" for o in ordered])
    if rng is None:
        return listed
    relations = _relations(objects)
    kinds = ["list", "position"] + (["count"] if len(objects) > 1 else [])
    kinds += ["relation"] * (2 if relations else 0)  # relations matter most: weight them up
    kind = rng.choice(kinds)
    if kind == "list":
        text = listed
    elif kind == "count":
        text = f"{_NUMBERS[len(objects)]} shapes: {listed}"
    elif kind == "relation":
        a, relation, b = rng.choice(relations)
        text = f"a {describe(a)} {relation} a {describe(b)}"
    else:
        obj = rng.choice(list(objects))
        text = f"a {describe(obj)} {_CELL_PHRASES[obj.row][obj.col]}"
    return rng.choice(_PREFIXES) + text


def questions(objects: Sequence[SceneObject]) -> list[dict[str, str]]:
    """Question-answer pairs about a scene, all answerable from the image alone.

    Deterministic (no randomness): counting for every shape, every present colour and both
    sizes plus the total; colour of each object whose shape (or size and shape) is unique;
    shape of each object whose colour is unique; size of each object; existence ("yes" for each
    object, "no" for a same-colour shape that is absent); spatial left-of / above for every
    ordered pair of objects in different columns / rows (both answers occur).

    Args:
        objects: The scene's objects.

    Returns:
        Dicts `{"question", "answer", "type"}`, type one of "count", "color", "shape", "size",
        "exists", "spatial". Answers are "yes" / "no", a digit string, or a word.
    """
    qa: list[dict[str, str]] = []

    def add(kind: str, question: str, answer: str) -> None:
        qa.append({"question": question, "answer": answer, "type": kind})

    add("count", "how many shapes are there?", str(len(objects)))
    for shape in SCENE_SHAPES:
        add("count", f"how many {shape}s are there?", str(sum(o.shape == shape for o in objects)))
    for color in SCENE_COLORS:
        n = sum(o.color == color for o in objects)
        if n:
            add("count", f"how many {color} shapes are there?", str(n))
    for size in SIZES:
        add(
            "count", f"how many {size} shapes are there?", str(sum(o.size == size for o in objects))
        )
    for obj in objects:
        same_shape = [o for o in objects if o.shape == obj.shape]
        if len(same_shape) == 1:
            add("color", f"what color is the {obj.shape}?", obj.color)
        elif sum(o.size == obj.size for o in same_shape) == 1:
            add("color", f"what color is the {obj.size} {obj.shape}?", obj.color)
        if sum(o.color == obj.color for o in objects) == 1:
            add("shape", f"what shape is the {obj.color} object?", obj.shape)
        add("size", f"what size is the {obj.color} {obj.shape}?", obj.size)
    present = {(o.color, o.shape) for o in objects}
    asked: set[tuple[str, str]] = set()
    for obj in objects:
        add("exists", f"is there a {obj.color} {obj.shape}?", "yes")
        # A hard negative: the same colour with the next shape that is absent.
        start = SCENE_SHAPES.index(obj.shape)
        for step in range(1, len(SCENE_SHAPES)):
            other = SCENE_SHAPES[(start + step) % len(SCENE_SHAPES)]
            if (obj.color, other) not in present:
                # Two objects of one colour may lead to the same negative: ask it once.
                if (obj.color, other) not in asked:
                    asked.add((obj.color, other))
                    add("exists", f"is there a {obj.color} {other}?", "no")
                break
    for a in objects:
        for b in objects:
            if a is b:
                continue
            name_a, name_b = f"{a.color} {a.shape}", f"{b.color} {b.shape}"
            if a.col != b.col:
                answer = "yes" if a.col < b.col else "no"
                add("spatial", f"is the {name_a} to the left of the {name_b}?", answer)
            if a.row != b.row:
                add(
                    "spatial",
                    f"is the {name_a} above the {name_b}?",
                    "yes" if a.row < b.row else "no",
                )
    return qa
