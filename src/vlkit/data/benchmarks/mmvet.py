"""MM-Vet (Yu et al. 2023) as it ships: `mm-vet.zip` unzipped, i.e. `mm-vet.json` next to an
`images/` folder.

`mm-vet.json` maps a sample id ("v1_0", ...) to {"imagename": "v1_0.png", "question": ...,
"answer": ... (with `<AND>` / `<OR>`), "capability": ["ocr", "math"]} (the official evaluator,
github.com/yuweihao/MM-Vet `mm-vet_evaluator.py`, reads exactly these keys; its inference
scripts open `images/<imagename>`). Samples keep the file's order, the order the official
evaluator grades and sums them in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from vlkit.data.images import load_image
from vlkit.errors import DatasetMissing

__all__ = ["LAYOUT", "MMVetSample", "MMVetSet", "mmvet_dataset", "read_mmvet"]

LAYOUT = (
    "DIR/mmvet/mm-vet.json and DIR/mmvet/images/<imagename> (unzip mm-vet.zip from "
    "https://github.com/yuweihao/MM-Vet/releases/download/v1/mm-vet.zip; its mm-vet/ folder "
    "also works)"
)


@dataclass(frozen=True)
class MMVetSample:
    """One MM-Vet question.

    Attributes:
        id: The sample id ("v1_0").
        image: Path of its image.
        question: The question (the model's prompt).
        answer: The ground truth, with `<AND>` / `<OR>`.
        capabilities: The capabilities it needs ("rec", "ocr", "know", "gen", "spat", "math").
    """

    id: str
    image: Path
    question: str
    answer: str
    capabilities: tuple[str, ...]


@dataclass
class MMVetSet:
    """The MM-Vet samples, in `mm-vet.json` order.

    Attributes:
        root: The directory holding `mm-vet.json`.
        samples: The samples (the first `limit` when read with one).
        total: Samples in the file before `limit`.
    """

    root: Path
    samples: list[MMVetSample]
    total: int = 0
    task = "mmvet"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> MMVetSample:
        return self.samples[index]

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of sample `index` (`vlkit.data.images.load_image`; errors name the file)."""
        return load_image(self.samples[index].image)

    def capabilities(self) -> dict[str, tuple[str, ...]]:
        """{sample id: its capabilities}, in order (what `aggregate_mmvet` takes)."""
        return {s.id: s.capabilities for s in self.samples}


def _metadata_file(root: Path) -> Path:
    for candidate in (root / "mm-vet.json", root / "mm-vet" / "mm-vet.json"):
        if candidate.is_file():
            return candidate
    raise DatasetMissing(f"mmvet: mm-vet.json not found under {root}; expected {LAYOUT}")


def _field(entry: Any, key: str, file: Path, sample: str) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise ValueError(f"mmvet: {file}: sample {sample!r} has no {key!r}")
    return entry[key]


def read_mmvet(root: str | Path, limit: int | None = None) -> MMVetSet:
    """Reads MM-Vet from `root` (see `LAYOUT`).

    Args:
        root: The directory holding `mm-vet.json` and `images/` (or the `mm-vet/` folder).
        limit: Keep the first `limit` samples.

    Raises:
        vlkit.errors.DatasetMissing: No mm-vet.json, or a sample's image is missing (one line
            naming the layout and where to get it).
        ValueError: Invalid JSON, a sample without one of the keys, a bad `limit`.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit}: must be >= 1")
    file = _metadata_file(Path(root).expanduser())
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"mmvet: {file}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"mmvet: {file}: expected a JSON object {{id: sample}}")
    images = file.parent / "images"
    samples = []
    for sample_id, entry in list(data.items())[:limit]:
        capabilities = _field(entry, "capability", file, sample_id)
        if not isinstance(capabilities, list) or not capabilities:
            raise ValueError(f"mmvet: {file}: sample {sample_id!r}: 'capability' must be a list")
        image = images / str(_field(entry, "imagename", file, sample_id))
        if not image.is_file():
            raise DatasetMissing(f"mmvet: image {image} not found; expected {LAYOUT}")
        samples.append(
            MMVetSample(
                id=str(sample_id),
                image=image,
                question=str(_field(entry, "question", file, sample_id)),
                answer=str(_field(entry, "answer", file, sample_id)),
                capabilities=tuple(str(c) for c in capabilities),
            )
        )
    return MMVetSet(root=file.parent, samples=samples, total=len(data))


def mmvet_dataset(root: Path, limit: int | None = None) -> MMVetSet:
    """The benchmark registry's dataset callable: `read_mmvet(root, limit)`."""
    return read_mmvet(root, limit)
