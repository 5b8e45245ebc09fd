"""Generative benchmarks read from their official files: VQAv2 val, TextVQA val, GQA testdev-balanced
and COCO captions (Karpathy test).

Each reader takes the task's directory (`--data-root DIR` gives `DIR/<task>`, `--data PATH` gives
PATH) in the layout the benchmark ships in (`LAYOUTS`), and returns a `GenerativeSet`: samples in
file order, each with the benchmark's own id (the one its submission format uses), the image
path, the question (None for captioning) and the reference answers. Nothing is downloaded: a
missing file raises `vlkit.errors.DatasetMissing` (a FileNotFoundError), one line naming the
expected layout and where to get it.

Formats (as published):

* VQAv2 (https://visualqa.org/download.html): `v2_OpenEnded_mscoco_val2014_questions.json`
  `{"questions": [{"question_id", "image_id", "question"}]}`, `v2_mscoco_val2014_annotations.json`
  `{"annotations": [{"question_id", "question_type", "answer_type", "answers": [{"answer"}]}]}`,
  images `val2014/COCO_val2014_<image_id:012d>.jpg`.
* TextVQA 0.5.1 (https://textvqa.org/dataset/): `TextVQA_0.5.1_val.json`
  `{"data": [{"question_id", "image_id", "question", "answers": [10 strings]}]}`, images
  `train_images/<image_id>.jpg` (the val images ship in the train_val archive).
* GQA (https://cs.stanford.edu/people/dorarad/gqa/download.html): `testdev_balanced_questions.json`
  `{question_id: {"imageId", "question", "answer", ...}}`, images `images/<imageId>.jpg`.
* COCO captions, Karpathy split (https://cs.stanford.edu/people/karpathy/deepimagesent/):
  `dataset_coco.json` `{"images": [{"filepath", "filename", "cocoid", "split", "sentences":
  [{"raw"}]}]}`; the 5,000 images with `"split": "test"`, at `<filepath>/<filename>` (COCO's
  val2014 folder, https://cocodataset.org/#download).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vlkit.data.images import load_image
from vlkit.errors import DatasetMissing

__all__ = [
    "DATASETS",
    "LAYOUTS",
    "GenerativeSample",
    "GenerativeSet",
    "coco_caption_dataset",
    "gqa_dataset",
    "textvqa_dataset",
    "vqav2_dataset",
]

VQAV2_QUESTIONS = "v2_OpenEnded_mscoco_val2014_questions.json"
VQAV2_ANNOTATIONS = "v2_mscoco_val2014_annotations.json"
TEXTVQA_FILE = "TextVQA_0.5.1_val.json"
GQA_FILE = "testdev_balanced_questions.json"
KARPATHY_COCO = "dataset_coco.json"

# One line each: the expected layout under the task's directory, and where to get it.
LAYOUTS: dict[str, str] = {
    "vqav2": f"{VQAV2_QUESTIONS}, {VQAV2_ANNOTATIONS} and val2014/COCO_val2014_*.jpg "
    "(https://visualqa.org/download.html: val questions, val annotations, COCO val2014 images)",
    "textvqa": f"{TEXTVQA_FILE} and train_images/<image_id>.jpg "
    "(https://textvqa.org/dataset/: TextVQA 0.5.1 val JSON and the train_val images)",
    "gqa": f"{GQA_FILE} and images/<imageId>.jpg "
    "(https://cs.stanford.edu/people/dorarad/gqa/download.html: questions and images)",
    "coco_caption": f"{KARPATHY_COCO} (Karpathy splits, "
    "https://cs.stanford.edu/people/karpathy/deepimagesent/) and val2014/*.jpg "
    "(https://cocodataset.org/#download)",
}


@dataclass(frozen=True)
class GenerativeSample:
    """One question (or one image to caption).

    Attributes:
        id: The benchmark's id, as its submission format spells it: VQAv2 / TextVQA
            `question_id` (int), GQA question id (str), COCO `image_id` (int).
        image: The image file.
        question: The question as the file has it; None for captioning.
        answers: VQAv2 / TextVQA: the human answers (10); GQA: the one answer; COCO: the
            reference captions.
        info: Per-sample extras (VQAv2: `question_type`, `answer_type`).
    """

    id: int | str
    image: Path
    question: str | None
    answers: tuple[str, ...]
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class GenerativeSet:
    """The samples of one generative benchmark, in file order.

    Attributes:
        task: "vqav2", "textvqa", "gqa" or "coco_caption".
        root: The directory it was read from.
        samples: The samples (the first `limit` when read with one).
        total: Samples in the files before `limit`.
    """

    task: str
    root: Path
    samples: list[GenerativeSample]
    total: int = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> GenerativeSample:
        return self.samples[index]

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of sample `index` (`vlkit.data.images.load_image`; errors name the file)."""
        return load_image(self.samples[index].image)


def _missing(task: str, root: Path, what: str) -> DatasetMissing:
    return DatasetMissing(f"{task}: {what} not found under {root}; expected {LAYOUTS[task]}")


def _read(task: str, root: Path, name: str) -> Any:
    path = root / name
    if not path.is_file():
        raise _missing(task, root, name)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{task}: {path}: not valid JSON ({error})") from None


def _key(obj: Any, key: str, path: Path, where: str) -> Any:
    if not isinstance(obj, Mapping) or key not in obj:
        raise ValueError(f"{path}: missing key {key!r} in {where}")
    return obj[key]


def _limited(samples: Iterable[GenerativeSample], limit: int | None) -> list[GenerativeSample]:
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit}: must be >= 1")
    out = []
    for sample in samples:
        if limit is not None and len(out) == limit:
            break
        out.append(sample)
    return out


def _checked(task: str, root: Path, samples: list[GenerativeSample], total: int) -> GenerativeSet:
    """The set, after checking that the images of the chosen samples exist."""
    if not samples:
        raise ValueError(f"{task}: no samples under {root}")
    for sample in samples:
        if not sample.image.is_file():
            relative = (
                sample.image.relative_to(root)
                if sample.image.is_relative_to(root)
                else sample.image
            )
            raise _missing(task, root, f"image {relative}")
    return GenerativeSet(task, root, samples, total)


def _split(split: str) -> None:
    if split not in ("test", "val"):
        raise ValueError(f"split={split!r}: the generative benchmarks have one evaluation split")


def vqav2_dataset(root: str | Path, limit: int | None = None, split: str = "test") -> GenerativeSet:
    """VQAv2 val: questions in the questions file's order, with their 10 human answers.

    Raises:
        vlkit.errors.DatasetMissing: A file or image is missing (one line: the layout, where to
            get it).
        ValueError: A malformed file (names the file and the key), a question without annotation.
    """
    _split(split)
    root = Path(root)
    questions_path, annotations_path = root / VQAV2_QUESTIONS, root / VQAV2_ANNOTATIONS
    questions = _key(
        _read("vqav2", root, VQAV2_QUESTIONS), "questions", questions_path, "top level"
    )
    annotations = _key(
        _read("vqav2", root, VQAV2_ANNOTATIONS), "annotations", annotations_path, "top level"
    )
    by_id = {}
    for i, ann in enumerate(annotations):
        by_id[_key(ann, "question_id", annotations_path, f"annotations[{i}]")] = ann

    def samples() -> Iterable[GenerativeSample]:
        for i, question in enumerate(questions):
            where = f"questions[{i}]"
            qid = _key(question, "question_id", questions_path, where)
            ann = by_id.get(qid)
            if ann is None:
                raise ValueError(f"{questions_path}: question_id {qid!r} has no annotation")
            answers = _key(ann, "answers", annotations_path, f"annotation of question {qid}")
            image_id = int(_key(question, "image_id", questions_path, where))
            yield GenerativeSample(
                id=qid,
                image=root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg",
                question=str(_key(question, "question", questions_path, where)),
                answers=tuple(str(a["answer"] if isinstance(a, Mapping) else a) for a in answers),
                info={
                    "image_id": image_id,
                    "question_type": ann.get("question_type", "unknown"),
                    "answer_type": ann.get("answer_type", "unknown"),
                },
            )

    return _checked("vqav2", root, _limited(samples(), limit), len(questions))


def textvqa_dataset(
    root: str | Path, limit: int | None = None, split: str = "test"
) -> GenerativeSet:
    """TextVQA 0.5.1 val: the `data` records in file order, with their 10 human answers."""
    _split(split)
    root = Path(root)
    path = root / TEXTVQA_FILE
    data = _key(_read("textvqa", root, TEXTVQA_FILE), "data", path, "top level")

    def samples() -> Iterable[GenerativeSample]:
        for i, item in enumerate(data):
            where = f"data[{i}]"
            image_id = str(_key(item, "image_id", path, where))
            yield GenerativeSample(
                id=_key(item, "question_id", path, where),
                image=root / "train_images" / f"{image_id}.jpg",
                question=str(_key(item, "question", path, where)),
                answers=tuple(str(a) for a in _key(item, "answers", path, where)),
                info={"image_id": image_id},
            )

    return _checked("textvqa", root, _limited(samples(), limit), len(data))


def gqa_dataset(root: str | Path, limit: int | None = None, split: str = "test") -> GenerativeSet:
    """GQA testdev-balanced: the questions in file order (12,578), each with its one answer."""
    _split(split)
    root = Path(root)
    path = root / GQA_FILE
    data = _read("gqa", root, GQA_FILE)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a JSON object {{question_id: question}}")

    def samples() -> Iterable[GenerativeSample]:
        for qid, item in data.items():
            where = f"question {qid}"
            image_id = str(_key(item, "imageId", path, where))
            yield GenerativeSample(
                id=str(qid),
                image=root / "images" / f"{image_id}.jpg",
                question=str(_key(item, "question", path, where)),
                answers=(str(_key(item, "answer", path, where)),),
                info={"image_id": image_id},
            )

    return _checked("gqa", root, _limited(samples(), limit), len(data))


def coco_caption_dataset(
    root: str | Path, limit: int | None = None, split: str = "test"
) -> GenerativeSet:
    """COCO captions, Karpathy test: the 5,000 `"split": "test"` images of `dataset_coco.json`
    in file order, with their reference captions (the `raw` sentences)."""
    _split(split)
    root = Path(root)
    path = root / KARPATHY_COCO
    images = _key(_read("coco_caption", root, KARPATHY_COCO), "images", path, "top level")
    test = [
        (i, image)
        for i, image in enumerate(images)
        if _key(image, "split", path, f"images[{i}]") == "test"
    ]

    def samples() -> Iterable[GenerativeSample]:
        for i, image in test:
            where = f"images[{i}]"
            sentences = _key(image, "sentences", path, where)
            yield GenerativeSample(
                id=int(_key(image, "cocoid", path, where)),
                image=root
                / str(image.get("filepath", ""))
                / str(_key(image, "filename", path, where)),
                question=None,
                answers=tuple(str(_key(s, "raw", path, f"{where}.sentences")) for s in sentences),
            )

    return _checked("coco_caption", root, _limited(samples(), limit), len(test))


DATASETS: dict[str, Callable[..., GenerativeSet]] = {
    "vqav2": vqav2_dataset,
    "textvqa": textvqa_dataset,
    "gqa": gqa_dataset,
    "coco_caption": coco_caption_dataset,
}
