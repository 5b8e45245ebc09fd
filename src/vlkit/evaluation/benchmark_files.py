"""Readers of standard benchmark files, with one-line errors that name the file and the key.

* An ImageFolder tree: one subfolder per class, class name = folder name with "_" -> " ".
* COCO captions: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}``,
  and COCO caption results ``[{"image_id", "caption"}]``.
* VQAv2: the official annotation, question and results files.

Malformed input (a missing file, invalid JSON, a missing key, an id that does not resolve) raises
a ValueError whose first line names the file and the key. `what` arguments say how the caller
names a file in messages (the parameter's name by default; the CLI passes its flag, e.g.
"--captions").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vlkit.data.images import IMAGE_SUFFIXES

__all__ = [
    "image_folder",
    "read_caption_results",
    "read_coco_captions",
    "read_coco_retrieval",
    "read_json",
    "read_vqa",
    "records",
    "require",
    "require_list",
]


def read_json(path: str | Path, what: str) -> Any:
    """Parses a JSON file; a missing or invalid file is a ValueError naming it.

    Args:
        path: The file.
        what: How the caller names it (e.g. "--captions"), for the message.
    """
    file = Path(path)
    if file.is_dir():
        raise ValueError(f"{what} {file}: is a directory, expected a JSON file")
    if not file.is_file():
        raise ValueError(f"{what} {file}: no such file")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} {file}: not valid JSON ({error})") from None


def require(obj: Any, key: str, file: str | Path, where: str = "top level") -> Any:
    """`obj[key]`, or a ValueError naming the file, the key and where it was expected."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{file}: expected a JSON object at {where}, got {type(obj).__name__}")
    if key not in obj:
        raise ValueError(f"{file}: missing key {key!r} in {where}")
    return obj[key]


def require_list(obj: Any, key: str, file: str | Path) -> list:
    """`obj[key]` checked to be a JSON list."""
    value = require(obj, key, file)
    if not isinstance(value, list):
        raise ValueError(f"{file}: key {key!r} must be a list, got {type(value).__name__}")
    return value


def records(
    items: Iterable[Any],
    keys: Sequence[str],
    file: Path,
    name: str,
    strings: Sequence[str] = (),
) -> list[tuple]:
    """The `keys` of every record of a list, as tuples; names the first record lacking one, or
    whose value for a key of `strings` is not a string (a caption, an answer)."""
    rows = []
    for i, item in enumerate(items):
        row = tuple(require(item, k, file, f"{name}[{i}]") for k in keys)
        for key, value in zip(keys, row, strict=True):
            if key in strings and not isinstance(value, str):
                raise ValueError(
                    f"{file}: key {key!r} of {name}[{i}] must be a string, got "
                    f"{type(value).__name__} {json.dumps(value)[:40]}"
                )
        rows.append(row)
    return rows


def image_folder(root: str | Path, what: str) -> tuple[list[Path], list[int], list[str]]:
    """Image paths, class indices and class names of an ImageFolder tree.

    Classes are the subfolders sorted by name (torchvision's order); the class name is the folder
    name with "_" replaced by " ". Images are the files with an image suffix, searched
    recursively inside each class folder.
    """
    directory = Path(root)
    if not directory.is_dir():
        raise ValueError(f"{what} {directory}: not a directory")
    folders = sorted(p for p in directory.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"{what} {directory}: no class subfolders (ImageFolder layout)")
    paths, labels = [], []
    for index, folder in enumerate(folders):
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            # An empty class would have an undefined recall: refuse rather than skew the mean.
            raise ValueError(f"{what} {directory}: class folder {folder.name!r} has no images")
        paths += files
        labels += [index] * len(files)
    return paths, labels, [f.name.replace("_", " ") for f in folders]


def read_coco_captions(path: str | Path, what: str) -> tuple[list[tuple], list[tuple]]:
    """(images [(id, file_name)], captions [(image_id, caption)]) of a COCO captions file.

    Caption image ids must name an image of the file's "images" list.
    """
    data = read_json(path, what)
    file = Path(path)
    images = records(
        require_list(data, "images", file), ("id", "file_name"), file, "images", ("file_name",)
    )
    captions = records(
        require_list(data, "annotations", file),
        ("image_id", "caption"),
        file,
        "annotations",
        strings=("caption",),
    )
    known = {image_id for image_id, _ in images}
    unknown = [image_id for image_id, _ in captions if image_id not in known]
    if unknown:
        raise ValueError(
            f"{file}: annotations 'image_id' {unknown[0]!r} is not an 'id' in 'images' "
            f"({len(unknown)} captions affected)"
        )
    return images, captions


def read_coco_retrieval(path: str | Path, what: str) -> tuple[list[str], list[str], list[int]]:
    """(image file names, captions, image index of each caption) of a COCO captions file.

    Every image needs a caption (its image -> text rank is undefined otherwise).
    """
    images, captions = read_coco_captions(path, what)
    if not images or not captions:
        raise ValueError(f"{what} {path}: needs at least one image and one caption")
    index = {image_id: i for i, (image_id, _) in enumerate(images)}
    without = len(images) - len({image_id for image_id, _ in captions})
    if without:
        raise ValueError(f"{path}: {without} entries of 'images' have no caption in 'annotations'")
    return (
        [name for _, name in images],
        [str(caption) for _, caption in captions],
        [index[image_id] for image_id, _ in captions],
    )


def _read_results(path: str | Path, key: str, value: str, duplicate: str, what: str) -> dict:
    """{record[key]: record[value]} of a results list (VQAv2 or COCO captions); a repeated key
    is an error ending in `duplicate`, as the official loaders reject it too."""
    file = Path(path)
    data = read_json(file, what)
    if not isinstance(data, list):
        raise ValueError(f"{what} {file}: expected a JSON list of {{{key}, {value}}}")
    results: dict[Any, str] = {}
    for record_key, record_value in records(data, (key, value), file, "results", (value,)):
        if record_key in results:
            raise ValueError(f"{file}: {key!r} {record_key!r} {duplicate}")
        results[record_key] = record_value
    return results


def _check_vqa_annotations(items: list, file: Path) -> None:
    keys = ("question_id", "question_type", "answer_type", "answers")
    for i, (_, _, _, answers) in enumerate(records(items, keys, file, "annotations")):
        if not isinstance(answers, list) or not answers:
            raise ValueError(f"{file}: key 'answers' of annotations[{i}] must be a non-empty list")
        for j, answer in enumerate(answers):
            where = f"annotations[{i}].answers[{j}]"
            text = require(answer, "answer", file, where) if isinstance(answer, Mapping) else answer
            if not isinstance(text, str):
                raise ValueError(
                    f"{file}: {where} must be a string answer, got {type(text).__name__}"
                )


def _check_same_ids(qids: Sequence[Any], present: set, file: Path, problem: str) -> None:
    """Raises when a question id of `qids` is not in `present`, naming `file` and the first id."""
    missing = [qid for qid in qids if qid not in present]
    if missing:
        raise ValueError(
            f"{file}: 'question_id' {missing[0]!r} {problem} ({len(missing)} questions affected)"
        )


def read_vqa(
    annotations_file: str | Path,
    questions_file: str | Path,
    results_file: str | Path,
    what: tuple[str, str, str] = ("annotations_file", "questions_file", "results_file"),
) -> tuple[dict[Any, str], list, list]:
    """(predictions {question_id: answer}, annotations, question ids) of the VQAv2 files.

    The questions scored are those of the questions file. As in the official `loadRes`, the
    results must answer exactly those questions: a missing, extra or repeated answer is an error.
    """
    ann_file, q_file, res_file = Path(annotations_file), Path(questions_file), Path(results_file)
    annotations = require_list(read_json(ann_file, what[0]), "annotations", ann_file)
    _check_vqa_annotations(annotations, ann_file)
    questions = require_list(read_json(q_file, what[1]), "questions", q_file)
    qids = [qid for (qid,) in records(questions, ("question_id",), q_file, "questions")]
    annotated = {ann["question_id"] for ann in annotations}
    _check_same_ids(qids, annotated, q_file, "has no annotation in " + str(ann_file))
    predictions = _read_results(res_file, "question_id", "answer", "appears twice", what[2])
    _check_same_ids(qids, set(predictions), res_file, "has no answer")
    extra = set(predictions) - set(qids)
    if extra:
        raise ValueError(
            f"{res_file}: 'question_id' {next(iter(extra))!r} is not in {q_file} "
            f"({len(extra)} answers affected)"
        )
    return predictions, annotations, qids


def read_caption_results(
    references_file: str | Path,
    results_file: str | Path,
    what: tuple[str, ...] = ("references_file", "results_file", "allow_missing=True"),
    allow_missing: bool = False,
) -> tuple[dict[Any, list[str]], dict[Any, str]]:
    """(references {image_id: [captions]}, candidates {image_id: caption}) to score.

    The images scored are those of the results file, as in COCOEvalCap with
    ``params["image_id"] = cocoRes.getImgIds()``; each needs references. One caption per image,
    since CIDEr-D scores exactly one candidate per image (pycocoevalcap asserts it). Unlike
    COCOEvalCap, a results file that captions only some of the referenced images is refused
    unless `allow_missing` (corpus scores over a subset are not the benchmark's numbers, and
    CIDEr-D's document frequencies change with the subset).

    Args:
        what: How the caller names the two files and the `allow_missing` switch in messages
            (the CLI passes its flags).
    """
    ref_file = Path(references_file)
    data = read_json(ref_file, what[0])
    references: dict[Any, list[str]] = {}
    annotations = require_list(data, "annotations", ref_file)
    rows = records(annotations, ("image_id", "caption"), ref_file, "annotations", ("caption",))
    for image_id, caption in rows:
        references.setdefault(image_id, []).append(caption)
    candidates = _read_results(
        results_file, "image_id", "caption", "has more than one caption", what[1]
    )
    if not candidates:
        raise ValueError(f"{what[1]} {results_file}: no captions")
    unknown = [image_id for image_id in candidates if image_id not in references]
    if unknown:
        raise ValueError(
            f"{results_file}: 'image_id' {unknown[0]!r} has no caption in {ref_file} "
            f"({len(unknown)} images affected)"
        )
    missing = [image_id for image_id in references if image_id not in candidates]
    if missing and not allow_missing:
        switch = what[2] if len(what) > 2 else "allow_missing=True"
        raise ValueError(
            f"{what[1]} {results_file}: no caption for {len(missing)} of the {len(references)} "
            f"images in {ref_file} (first: image_id {missing[0]!r}); caption every image or "
            f"pass {switch} to score only the {len(candidates)} captioned"
        )
    return {image_id: references[image_id] for image_id in candidates}, candidates
