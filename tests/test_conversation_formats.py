"""Conversation readers on files written by the real tools: `datasets` (parquet, save_to_disk),
JSONL / JSON / CSV, LLaVA conversation JSON and the official VQA v2 question + annotation pair.

Each test checks the canonical rows field by field, and that bad rows are skipped, counted
and named (file + row), or raise one line with `strict=True`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from vlkit.data.datasets.conversation_formats import read_conversations, read_vqa_v2
from vlkit.data.datasets.llava_conversations import read_llava_conversations

datasets = pytest.importorskip("datasets")


def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (12, 9)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def _png_bytes(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (10, 7), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_llava_json_multi_turn_and_bad_rows(tmp_path):
    _png(tmp_path / "a.png", (255, 0, 0))
    _png(tmp_path / "b.png", (0, 255, 0))
    rows = [
        {"id": "two", "image": ["a.png", "b.png"], "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "<image>\nLeft, and <image> right?"},
            {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "And the second?"},
            {"from": "gpt", "value": "Green."},
        ]},
        {"id": "implicit", "image": "a.png", "conversations": [
            {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Red."}]},
        {"id": "missing", "image": "nope.png", "conversations": [
            {"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "x"}]},
        {"id": "no_answer", "image": "a.png", "conversations": [
            {"from": "human", "value": "<image>?"}]},
        {"id": "count", "image": ["a.png"], "conversations": [
            {"from": "human", "value": "<image><image>?"}, {"from": "gpt", "value": "x"}]},
    ]  # fmt: skip
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(rows))
    with pytest.warns(UserWarning, match=r"llava.json: skipped 3 bad row\(s\)"):
        data = read_conversations(path)
    assert [r["id"] for r in data.rows] == ["two", "implicit"]
    assert data.rows[0]["images"] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert data.rows[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<image>\nLeft, and <image> right?"},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "And the second?"},
        {"role": "assistant", "content": "Green."},
    ]
    assert data.rows[1]["messages"][0]["content"] == "<image>Colour?"  # prepended, as LLaVA
    assert len(data.skipped) == 3
    assert "llava.json row 2 (id 'missing'): missing image file" in data.skipped[0]
    assert "row 3 (id 'no_answer'): no assistant turn" in data.skipped[1]
    assert "row 4 (id 'count'): 2 <image> placeholders for 1 images" in data.skipped[2]
    with pytest.raises(ValueError, match=r"^\S*llava.json row 2 \(id 'missing'\): missing image"):
        read_conversations(path, strict=True)
    # The existing LLaVA reader still reads the same file.
    with pytest.warns(UserWarning):
        llava_rows, _ = read_llava_conversations(path)
    assert [r["id"] for r in llava_rows][:1] == ["implicit"]


def _cauldron_dataset(tmp_path: Path):
    """Cauldron rows as `datasets` holds them: an Image list feature and `texts` turns."""
    features = datasets.Features({
        "images": datasets.List(datasets.Image()),
        "texts": datasets.List({"user": datasets.Value("string"),
                                "assistant": datasets.Value("string"),
                                "source": datasets.Value("string")}),
    })  # fmt: skip
    images = [[_png_bytes((255, 0, 0))], [_png_bytes((0, 0, 255)), _png_bytes((0, 255, 0))], []]
    texts = [
        [{"user": "What colour?", "assistant": "Red.", "source": "easy"},
         {"user": "Sure?", "assistant": "Yes.", "source": "easy"}],
        [{"user": "Colours?", "assistant": "Blue, green.", "source": "easy"}],
        [],  # no assistant turn: skipped
    ]  # fmt: skip
    images = [[{"bytes": b, "path": None} for b in row] for row in images]
    return datasets.Dataset.from_dict({"images": images, "texts": texts}, features=features)


def _check_cauldron(data) -> None:
    assert len(data.rows) == 2 and len(data.skipped) == 1
    assert "row 2: no assistant turn" in data.skipped[0]
    first, second = data.rows
    assert first["messages"] == [
        {"role": "user", "content": "<image>What colour?"},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes."},
    ]
    assert second["messages"][0]["content"] == "<image><image>Colours?"
    assert [Image.open(io.BytesIO(b)).getpixel((0, 0)) for b in second["images"]] == [
        (0, 0, 255),
        (0, 255, 0),
    ]


def test_cauldron_parquet_and_save_to_disk(tmp_path):
    dataset = _cauldron_dataset(tmp_path)
    dataset.to_parquet(str(tmp_path / "cauldron.parquet"))
    with pytest.warns(UserWarning, match="cauldron.parquet: skipped 1"):
        _check_cauldron(read_conversations(tmp_path / "cauldron.parquet"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    with pytest.warns(UserWarning, match="saved: skipped 1"):
        _check_cauldron(read_conversations(tmp_path / "saved"))
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "dict"))
    with pytest.warns(UserWarning):
        _check_cauldron(read_conversations(tmp_path / "dict", split="train"))
    with pytest.raises(ValueError, match="no split 'test'"):
        read_conversations(tmp_path / "dict", split="test")
    with pytest.raises(ValueError, match="row 2: no assistant turn"):
        read_conversations(tmp_path / "saved", strict=True)
    # A folder of parquet shards.
    (tmp_path / "shards").mkdir()
    dataset.select([0]).to_parquet(str(tmp_path / "shards" / "0.parquet"))
    dataset.select([1]).to_parquet(str(tmp_path / "shards" / "1.parquet"))
    assert len(read_conversations(tmp_path / "shards").rows) == 2


def test_trl_messages_jsonl_and_decoded_images(tmp_path):
    _png(tmp_path / "a.png", (9, 9, 9))
    rows = [
        {"images": ["a.png"], "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Grey."}]}]},
        {"images": [], "messages": [
            {"role": "system", "content": "Helpful."},
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
        {"images": ["a.png"], "messages": [{"role": "robot", "content": "x"}]},
    ]  # fmt: skip
    path = tmp_path / "trl.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    with pytest.warns(UserWarning, match="skipped 2"):
        data = read_conversations(path)
    assert data.rows[0]["messages"][0] == {"role": "user", "content": "<image>What?"}
    assert data.rows[0]["images"] == [str(tmp_path / "a.png")]
    assert data.rows[1]["messages"][0] == {"role": "system", "content": "Helpful."}
    assert data.rows[1]["images"] == []
    assert (
        "trl.jsonl row 2: messages[0]['role'] must be system, user or assistant"
        in (data.skipped[0])
    )
    assert "row 3: line 4 is not JSON" in data.skipped[1]
    # Images given to `datasets` as files are stored as bytes and read back: accepted too.
    features = datasets.Features({
        "images": datasets.List(datasets.Image()),
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.List(
            {"type": datasets.Value("string"), "text": datasets.Value("string")})}),
    })  # fmt: skip
    table = datasets.Dataset.from_list(
        [{**rows[0], "images": [str(tmp_path / "a.png")]}], features=features
    )
    assert isinstance(table[0]["images"][0], Image.Image)  # what `datasets` hands a user
    table.save_to_disk(str(tmp_path / "trl_saved"))
    saved = read_conversations(tmp_path / "trl_saved")
    assert saved.rows[0]["messages"] == data.rows[0]["messages"]
    assert Image.open(io.BytesIO(saved.rows[0]["images"][0])).getpixel((0, 0)) == (9, 9, 9)


def test_vqa_rows_csv_json_and_official_pair(tmp_path):
    _png(tmp_path / "q.png", (1, 2, 3))
    with (tmp_path / "vqa.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["image", "question", "answer"])
        writer.writeheader()
        writer.writerow({"image": "q.png", "question": "What?", "answer": "a square"})
        writer.writerow({"image": "gone.png", "question": "What?", "answer": "x"})
    with pytest.warns(UserWarning, match="vqa.csv: skipped 1"):
        data = read_conversations(tmp_path / "vqa.csv")
    assert data.rows[0]["messages"] == [
        {"role": "user", "content": "<image>What?"},
        {"role": "assistant", "content": "a square"},
    ]
    answers = ["two", "2", "two", "three", "2", "two", "2", "two", "two", "2"]
    (tmp_path / "vqa.json").write_text(json.dumps(
        [{"image": "q.png", "question": "How many?", "answers": [{"answer": a} for a in answers]}]
    ))  # fmt: skip
    assert read_conversations(tmp_path / "vqa.json").rows[0]["messages"][1]["content"] == "two"
    # The official VQA v2 pair, COCO file names.
    coco = tmp_path / "val2014"
    coco.mkdir()
    _png(coco / "COCO_val2014_000000000042.jpg", (5, 5, 5))
    questions = {"data_subtype": "val2014", "questions": [
        {"image_id": 42, "question": "How many?", "question_id": 420},
        {"image_id": 7, "question": "Where?", "question_id": 70}]}  # fmt: skip
    annotations = {"annotations": [
        {"question_id": 420, "image_id": 42, "multiple_choice_answer": "2",
         "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)]},
        {"question_id": 70, "image_id": 7, "multiple_choice_answer": "home",
         "answers": [{"answer": "home"}]}]}  # fmt: skip
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    with pytest.warns(UserWarning, match="skipped 1"):
        data = read_vqa_v2(tmp_path / "q.json", tmp_path / "a.json", coco)
    (row,) = data.rows
    assert row["id"] == "420" and row["images"] == [str(coco / "COCO_val2014_000000000042.jpg")]
    assert row["messages"][1]["content"] == "two"
    assert "q.json row 1 (id '70'): missing image file" in data.skipped[0]
    with pytest.warns(UserWarning):
        chosen = read_vqa_v2(
            tmp_path / "q.json", tmp_path / "a.json", coco, answer="multiple_choice"
        )
    assert chosen.rows[0]["messages"][1]["content"] == "2"
    with pytest.raises(ValueError, match="read_vqa_v2"):
        read_conversations(tmp_path / "q.json")


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_conversations(tmp_path / "none.json")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match=r"unknown data file type '.txt'"):
        read_conversations(tmp_path / "x.txt")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not JSON"):
        read_conversations(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps([{"caption": "x"}]))
    with pytest.raises(ValueError, match="no 'conversations', 'messages', 'texts' or 'question'"):
        read_conversations(tmp_path / "other.json", strict=True)
