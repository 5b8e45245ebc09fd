"""Conversation data on disk -> one canonical row shape for supervised fine-tuning.

Formats people keep their fine-tuning data in, each read to rows

    {"id": str, "source": "FILE row N", "images": [path str | PIL image | bytes, ...],
     "messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}

where each image is marked by one `<image>` in the user turns, in order (a row with images but
no placeholder gets them prepended to its first user turn, as LLaVA's `preprocess_multimodal`
and TRL's vision collators do):

- LLaVA conversation JSON (`llava/train/train.py`): `{"id", "image" | "images",
  "conversations": [{"from": "human" | "gpt" | "system", "value"}, ...]}`.
- The Cauldron (`HuggingFaceM4/the_cauldron`): `{"images": [...], "texts": [{"user",
  "assistant", "source"}, ...]}`.
- TRL's vision SFT layout (`trl/trainer/sft_trainer.py`, `HuggingFaceH4/llava-instruct-mix-vsft`):
  `{"images": [...], "messages": [{"role", "content": str | [{"type": "image"} | {"type":
  "text", "text"}]}]}`.
- VQA question/answer rows: `{"image", "question", "answer" | "answers" | "multiple_choice_answer"}`
  (one turn), and the official VQA v2 pair of questions + annotations JSON files (`read_vqa_v2`).
  A VQA row with a list of human answers keeps them as `"answers": [str, ...]` (the held-out
  evaluation of `vlkit finetune` then reports the official VQA accuracy).

Containers: a JSON list, JSONL, CSV (VQA rows), parquet files (read with pyarrow, as `datasets`
writes them: an image is a `{"bytes", "path"}` struct), or a directory written by
`datasets.Dataset.save_to_disk` (read with `datasets.load_from_disk`). Images stay undecoded
(path or bytes) until the dataset item is built; image paths are resolved against
`image_folder` (default: the data file's folder) and must exist.

Bad rows (no assistant turn, placeholders not matching the images, a missing image file, a
malformed turn) are skipped and counted with one warning naming the file and row, or raise a
one-line `ValueError` with `strict=True`.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = [
    "IMAGE_PLACEHOLDER",
    "ConversationData",
    "conversation_row",
    "read_conversations",
    "read_vqa_v2",
]

IMAGE_PLACEHOLDER = "<image>"
_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "system": "system",
}  # fmt: skip
_DATASETS_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")


class RowError(ValueError):
    """Why one row cannot be used (the reader adds the file and row)."""


@dataclass
class ConversationData:
    """The usable rows of a data source and one reason per skipped row.

    Attributes:
        rows: Canonical rows (see the module docstring).
        skipped: One line per skipped row, naming its file and row.
    """

    rows: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


def read_conversations(
    path: str | Path,
    *,
    image_folder: str | Path | None = None,
    strict: bool = False,
    split: str = "train",
) -> ConversationData:
    """Reads conversation rows in any supported format (chosen by file type and row keys).

    Args:
        path: A .json / .jsonl / .csv / .parquet file, a folder of parquet files, or a
            `save_to_disk` folder (a `DatasetDict` folder takes `split`).
        image_folder: Base of relative image paths; defaults to the data file's folder.
        strict: Raise on the first bad row instead of skipping it.
        split: The split of a saved `DatasetDict`.

    Raises:
        FileNotFoundError: No such file or folder.
        ValueError: An unreadable file, an unknown file type, or (strict) a bad row; one line
            naming the file (and row).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    folder = Path(image_folder) if image_folder is not None else (
        path if path.is_dir() else path.parent
    )  # fmt: skip
    return _normalise(_raw_rows(path, split), str(path), folder, strict)


def read_vqa_v2(
    questions: str | Path,
    annotations: str | Path,
    image_folder: str | Path,
    *,
    answer: str = "most_common",
    strict: bool = False,
) -> ConversationData:
    """The official VQA v2 files (`v2_OpenEnded_mscoco_*_questions.json` +
    `v2_mscoco_*_annotations.json`) as one-turn conversations.

    Images are COCO files `COCO_<data_subtype>_<image_id:012d>.jpg` in `image_folder`, as the
    VQA API (`vqaTools/vqa.py`) names them.

    Args:
        questions: The questions JSON (`{"data_subtype", "questions": [{"question_id",
            "image_id", "question"}]}`).
        annotations: The annotations JSON (`{"annotations": [{"question_id", "answers":
            [{"answer"}, ...], "multiple_choice_answer"}]}`).
        image_folder: The folder of COCO images.
        answer: "most_common" (the most frequent of the 10 human answers; ties go to the first
            given) or "multiple_choice" (`multiple_choice_answer`).
        strict: Raise on the first bad row.
    """
    if answer not in ("most_common", "multiple_choice"):
        raise ValueError(f"answer={answer!r}: 'most_common' or 'multiple_choice'")
    question_data, annotation_data = _read_json(questions), _read_json(annotations)
    if not isinstance(question_data, dict) or "questions" not in question_data:
        raise ValueError(f"{questions}: a VQA questions file is an object with 'questions'")
    if not isinstance(annotation_data, dict) or "annotations" not in annotation_data:
        raise ValueError(f"{annotations}: a VQA annotations file is an object with 'annotations'")
    subtype = question_data.get("data_subtype", "")
    by_question = {a.get("question_id"): a for a in annotation_data["annotations"]}
    raw = []
    for q in question_data["questions"]:
        note = by_question.get(q.get("question_id"), {})
        row = {"id": str(q.get("question_id")), "question": q.get("question")}
        row["image"] = f"COCO_{subtype}_{int(q.get('image_id', -1)):012d}.jpg"
        if answer == "multiple_choice":
            row["answer"] = note.get("multiple_choice_answer")
        row["answers"] = note.get("answers")  # kept on the row (official VQA accuracy)
        raw.append(row)
    return _normalise(iter(raw), str(questions), Path(image_folder), strict)


def conversation_row(raw: Any, image_folder: Path | None = None) -> dict[str, Any]:
    """One row of any supported layout as a canonical row (without "id" / "source").

    Raises:
        RowError: Why the row cannot be used.
    """
    answers: list[str] = []
    if isinstance(raw, dict) and raw.get("conversations") is not None:
        messages = _llava_messages(raw["conversations"])
    elif isinstance(raw, dict) and raw.get("messages") is not None:
        messages = _trl_messages(raw["messages"])
    elif isinstance(raw, dict) and raw.get("texts") is not None:
        messages = _cauldron_messages(raw["texts"])
    elif isinstance(raw, dict) and raw.get("question") is not None:
        messages = _vqa_messages(raw)
        answers = _human_answers(raw.get("answers"))
    else:
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise RowError(f"no 'conversations', 'messages', 'texts' or 'question' key (got {got})")
    images = [_image(item, image_folder) for item in _image_list(raw)]
    row = {"images": images, "messages": _place_images(messages, len(images))}
    if answers:  # VQAv2's ten human answers: held-out evaluation scores official VQA accuracy
        row["answers"] = answers
    return row


def _human_answers(answers: Any) -> list[str]:
    """The human answers of a VQA row (`["a", ...]` or VQAv2's `[{"answer": "a"}, ...]`), as
    strings; [] when there are none."""
    if not isinstance(answers, list):
        return []
    texts = [a.get("answer") if isinstance(a, dict) else a for a in answers]
    return [t for t in texts if isinstance(t, str)]


# ---------------------------------------------------------------------------------------------
# Containers


def _read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None


def _raw_rows(path: Path, split: str) -> Iterator[Any]:
    if path.is_dir():
        if any((path / name).exists() for name in _DATASETS_FILES):
            return _saved_dataset_rows(path, split)
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise ValueError(
                f"{path}: neither a `datasets` save_to_disk folder nor a folder of .parquet files"
            )
        return (row for file in files for row in _parquet_rows(file))
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_rows(path)
    if suffix == ".json":
        data = _read_json(path)
        if isinstance(data, dict) and "questions" in data:
            raise ValueError(
                f"{path}: a VQA v2 questions file; read it with read_vqa_v2(questions, "
                "annotations, image_folder)"
            )
        if not isinstance(data, list):
            raise ValueError(f"{path}: a conversation JSON file is a list of rows")
        return iter(data)
    if suffix == ".csv":
        with path.open(newline="") as handle:
            return iter(list(csv.DictReader(handle)))
    if suffix == ".parquet":
        return _parquet_rows(path)
    raise ValueError(
        f"{path}: unknown data file type {suffix!r} (allowed: .json, .jsonl, .csv, .parquet, or "
        "a save_to_disk folder)"
    )


def _jsonl_rows(path: Path) -> Iterator[Any]:
    with path.open() as handle:
        for n, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                # A broken line is a bad row, reported like the others.
                yield _BadLine(f"line {n + 1} is not JSON ({error})")


@dataclass
class _BadLine:
    problem: str


def _parquet_rows(path: Path) -> Iterator[Any]:
    import pyarrow.parquet as parquet  # comes with `datasets` (the finetune extra)

    # datasets writes an Image feature as a {"bytes", "path"} struct: kept undecoded here.
    yield from parquet.read_table(path).to_pylist()


def _saved_dataset_rows(path: Path, split: str) -> Iterator[Any]:
    import datasets

    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise ValueError(f"{path}: no split {split!r} (has {sorted(data)})")
        data = data[split]
    # The arrow format keeps Image features undecoded ({"bytes", "path"}), as in parquet.
    yield from data.with_format("arrow")[:].to_pylist()


def _normalise(raw: Iterable[Any], source: str, folder: Path, strict: bool) -> ConversationData:
    data = ConversationData(rows=[])
    for n, item in enumerate(raw):
        name = item.get("id") if isinstance(item, dict) else None
        where = f"{source} row {n}" + (f" (id {name!r})" if name is not None else "")
        try:
            if isinstance(item, _BadLine):
                raise RowError(item.problem)
            row = conversation_row(item, folder)
        except RowError as error:
            message = f"{where}: {error}"
            if strict:
                raise ValueError(message) from None
            data.skipped.append(message)
            continue
        data.rows.append({"id": str(name if name is not None else n), "source": where, **row})
    if data.skipped:
        more = f" (first: {data.skipped[0]})"
        warnings.warn(f"{source}: skipped {len(data.skipped)} bad row(s){more}", stacklevel=3)
    return data


# ---------------------------------------------------------------------------------------------
# Turns


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _llava_messages(turns: Any) -> list[dict[str, str]]:
    if not isinstance(turns, list):
        raise RowError("'conversations' must be a list")
    messages = []
    for t, turn in enumerate(turns):
        role = _ROLES.get(turn.get("from")) if isinstance(turn, dict) else None
        if role is None:
            raise RowError(f"conversations[{t}]['from'] must be human, gpt or system")
        messages.append({"role": role, "content": _text(turn.get("value"), f"conversations[{t}]")})
    return messages


def _trl_messages(turns: Any) -> list[dict[str, str]]:
    if not isinstance(turns, list):
        raise RowError("'messages' must be a list")
    messages = []
    for t, turn in enumerate(turns):
        role = turn.get("role") if isinstance(turn, dict) else None
        if role not in ("system", "user", "assistant"):
            raise RowError(f"messages[{t}]['role'] must be system, user or assistant")
        content = turn.get("content")
        if isinstance(content, list):  # [{"type": "image"}, {"type": "text", "text": ...}]
            pieces = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "image":
                    pieces.append(IMAGE_PLACEHOLDER)
                elif kind == "text":
                    pieces.append(_text(part.get("text"), f"messages[{t}] text part"))
                else:
                    raise RowError(f"messages[{t}]: content parts are image or text, got {kind!r}")
            content = "".join(pieces)
        messages.append({"role": role, "content": _text(content, f"messages[{t}]['content']")})
    return messages


def _cauldron_messages(turns: Any) -> list[dict[str, str]]:
    if not isinstance(turns, list):
        raise RowError("'texts' must be a list")
    messages = []
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError(f"texts[{t}] must be an object with 'user' and 'assistant'")
        messages.append({"role": "user", "content": _text(turn.get("user"), f"texts[{t}]['user']")})
        answer = _text(turn.get("assistant"), f"texts[{t}]['assistant']")
        messages.append({"role": "assistant", "content": answer})
    return messages


def _vqa_messages(raw: dict) -> list[dict[str, str]]:
    answer = raw.get("answer", raw.get("multiple_choice_answer"))
    answers = raw.get("answers")
    if answer is None and isinstance(answers, list) and answers:
        # VQA v2 keeps 10 human answers per question: train on the most common one.
        texts = [a.get("answer") if isinstance(a, dict) else a for a in answers]
        answer = Counter(texts).most_common(1)[0][0]
    question = _text(raw["question"], "'question'")
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": _text(answer, "the answer")},
    ]


def _place_images(messages: list[dict[str, str]], count: int) -> list[dict[str, str]]:
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("no assistant turn (nothing to train on)")
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise RowError("no user turn")
    for m in messages:
        if m["role"] != "user" and IMAGE_PLACEHOLDER in m["content"]:
            raise RowError(
                f"{IMAGE_PLACEHOLDER} in a {m['role']} turn (only user turns hold images)"
            )
    placeholders = sum(messages[i]["content"].count(IMAGE_PLACEHOLDER) for i in users)
    if placeholders == 0 and count:
        first = messages[users[0]]
        messages[users[0]] = {**first, "content": IMAGE_PLACEHOLDER * count + first["content"]}
    elif placeholders != count:
        raise RowError(f"{placeholders} {IMAGE_PLACEHOLDER} placeholders for {count} images")
    return messages


# ---------------------------------------------------------------------------------------------
# Images


def _image_list(raw: dict) -> list[Any]:
    images = raw.get("images", raw.get("image", raw.get("image_path")))
    if images is None:
        return []
    if isinstance(images, (str, bytes, dict, Image.Image)):
        return [images]
    if not isinstance(images, list):
        raise RowError(f"'images' must be a list, got {type(images).__name__}")
    return images


def _image(item: Any, folder: Path | None) -> str | bytes | Image.Image:
    if isinstance(item, dict):  # datasets' Image struct
        if item.get("bytes"):
            return item["bytes"]
        item = item.get("path")
    if isinstance(item, (bytes, Image.Image)):
        return item
    if not isinstance(item, str) or not item:
        raise RowError(f"an image must be a path, bytes or a PIL image, got {type(item).__name__}")
    path = Path(item)
    if folder is not None and not path.is_absolute():
        path = folder / path
    if not path.is_file():
        raise RowError(f"missing image file {path}")
    return str(path)
