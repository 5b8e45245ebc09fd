"""Image-text datasets: folder + CSV/JSONL, WebDataset shards, synthetic shapes, collation."""

from __future__ import annotations

import csv
import json
import random
import re
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import vlkit
from vlkit.data.collate import collate_image_text
from vlkit.data.datasets.image_text import ImageTextDataset, SkippedSampleWarning
from vlkit.data.datasets.shape_scenes import (
    BACKGROUND,
    SCENE_COLORS,
    SCENE_SHAPES,
    caption,
    generate_scene,
    questions,
    render_depth,
)
from vlkit.data.datasets.shapes import ShapesDataset
from vlkit.data.shards import (
    MANIFEST,
    WebDatasetImageText,
    epoch_shards,
    split_shards,
    webdataset_loader,
    write_annotated_shards,
    write_shards,
)
from vlkit.data.transforms import ImageTransform
from vlkit.training.sampler import ResumableBatchSampler

pytest.importorskip("webdataset")

CONTEXT = 32


@pytest.fixture(scope="module")
def tok():
    return vlkit.get_tokenizer("clip", context_length=CONTEXT)


@pytest.fixture(scope="module")
def train_tf():
    return ImageTransform(vlkit.PRESETS["small-64"].preprocess, train=True)


@pytest.fixture(scope="module")
def eval_tf():
    return ImageTransform(vlkit.PRESETS["small-64"].preprocess)


def _photo(size: tuple[int, int]) -> Image.Image:
    """A real photo when scikit-image is there, else a scene; near square, so crops vary."""
    try:
        from skimage import data
    except ImportError:
        return generate_scene(random.Random(0), 64, 3)[0].resize(size)
    return Image.fromarray(data.chelsea()[:, 60:400]).resize(size)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Images: two good ones, a truncated JPEG, a text file named .png; one path is missing."""
    root = tmp_path / "images"
    root.mkdir()
    _photo((80, 72)).save(root / "cat.jpg", quality=90)
    generate_scene(random.Random(3), 64, 3)[0].save(root / "shapes.png")
    data = (root / "cat.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "notes.png").write_text("not an image")
    return root


def _write_csv(path: Path, rows: list[tuple[str, str]], header: str = "image,caption") -> Path:
    lines = [header] + [f"{image},{text}" for image, text in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# ---------------------------------------------------------------------------------------------
# ImageTextDataset


def test_csv_dataset_reads_images_and_tokenizes(folder, tmp_path, train_tf, eval_tf, tok):
    absolute = folder / "shapes.png"
    csv_path = _write_csv(
        tmp_path / "ann.csv", [("cat.jpg", "a photo of a cat"), (str(absolute), "some shapes")]
    )
    ds = ImageTextDataset(folder, csv_path, eval_tf, tok)
    assert len(ds) == 2
    sample = ds[0]
    assert set(sample) == {"image", "text", "index"}
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.float32
    assert sample["text"].shape == (CONTEXT,) and sample["text"].dtype == torch.long
    assert torch.equal(sample["text"], tok(["a photo of a cat"])[0])
    assert torch.equal(sample["image"], eval_tf(Image.open(folder / "cat.jpg").convert("RGB")))
    # An absolute image path is used as it is, not joined to root.
    assert ds.image_path(1) == absolute and ds[1]["index"] == 1
    assert ds[-1]["index"] == 1
    with pytest.raises(IndexError):
        ds[2]
    # Seeded keys work on the train transform too.
    assert ImageTextDataset(folder, csv_path, train_tf, tok)[(0, 5)]["image"].shape == (3, 64, 64)


def test_jsonl_dataset_custom_columns_and_caption_lists(folder, tmp_path, train_tf, tok):
    captions = ["a cat", "a tabby cat on a rug", "a sleepy cat"]
    path = _write_jsonl(
        tmp_path / "ann.jsonl",
        [{"file": "cat.jpg", "text": captions}, "", {"file": "shapes.png", "text": "shapes"}],
    )
    ds = ImageTextDataset(folder, path, train_tf, tok, image_column="file", caption_column="text")
    assert len(ds) == 2  # the blank line is not a record
    # No seed: the first caption.
    assert torch.equal(ds[0]["text"], tok([captions[0]])[0])
    # With seeds: each caption of the list gets picked by some seed.
    seen = {tuple(ds[(0, seed)]["text"].tolist()) for seed in range(40)}
    assert seen == {tuple(row) for row in tok(captions).tolist()}
    # format= overrides the suffix.
    renamed = tmp_path / "ann.txt"
    renamed.write_text(path.read_text())
    assert (
        len(ImageTextDataset(folder, renamed, train_tf, tok, "file", "text", format="jsonl")) == 2
    )


def test_bad_samples_are_skipped_with_reason_and_one_warning(folder, tmp_path, eval_tf, tok):
    path = _write_jsonl(
        tmp_path / "ann.jsonl",
        [
            {"image": "cat.jpg", "caption": "good"},
            {"image": "truncated.jpg", "caption": "a truncated file"},
            {"image": "gone.jpg", "caption": "a missing file"},
            {"image": "notes.png", "caption": "not an image"},
            {"image": "shapes.png", "caption": "   "},
            {"image": "shapes.png", "caption": ["", 7]},
            {"image": "shapes.png", "caption": "bad \ud800 text"},
            "{not json",
            {"image": "shapes.png"},
        ],
    )
    ds = ImageTextDataset(folder, path, eval_tf, tok)
    expected = {
        1: ("truncated.jpg", "truncated or corrupt"),
        2: ("gone.jpg", "no such file"),
        3: ("notes.png", "not a recognised image"),
        4: ("shapes.png", "empty caption"),
        5: ("shapes.png", "no usable caption"),
        6: ("shapes.png", "not valid UTF-8"),
        7: ("ann.jsonl", "invalid JSON"),
        8: ("shapes.png", "no 'caption' field"),
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = [ds[i] for i in range(len(ds))]
        again = ds[1]  # the same bad file again: no second warning
    for index, (name, why) in expected.items():
        sample = samples[index]
        assert set(sample) == {"skipped", "index"} and sample["index"] == index
        assert name in sample["skipped"] and why in sample["skipped"], sample["skipped"]
        assert "\n" not in sample["skipped"]
    assert again == samples[1]
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedSampleWarning)]
    assert sum("truncated.jpg" in m for m in messages) == 1
    assert sum("gone.jpg" in m for m in messages) == 1
    # shapes.png is one file with several bad lines: warned once.
    assert sum("shapes.png" in m for m in messages) == 1
    batch = collate_image_text(samples)
    assert batch["images"].shape == (1, 3, 64, 64) and batch["texts"].shape == (1, CONTEXT)
    assert batch["indices"].tolist() == [0]
    assert len(batch["skipped"]) == len(expected)


def test_configuration_errors_name_file_and_column(folder, tmp_path, eval_tf, tok):
    csv_path = _write_csv(tmp_path / "a.csv", [("cat.jpg", "x")], header="image,text")
    with pytest.raises(ValueError, match=r"a\.csv.*'caption'"):
        ImageTextDataset(folder, csv_path, eval_tf, tok)
    with pytest.raises(ValueError, match=r"a\.csv.*'path'"):
        ImageTextDataset(folder, csv_path, eval_tf, tok, image_column="path", caption_column="text")
    jsonl = _write_jsonl(tmp_path / "b.jsonl", [{"image": "cat.jpg", "text": "x"}])
    with pytest.raises(ValueError, match=r"b\.jsonl.*'caption'.*'text'"):
        ImageTextDataset(folder, jsonl, eval_tf, tok)
    for name, content in (
        ("empty.csv", ""),
        ("empty.jsonl", "\n\n"),
        ("head.csv", "image,caption\n"),
    ):
        (tmp_path / name).write_text(content)
        with pytest.raises(ValueError, match=re.escape(name)):
            ImageTextDataset(folder, tmp_path / name, eval_tf, tok)
    (tmp_path / "c.json").write_text("[]")
    with pytest.raises(ValueError, match="format"):
        ImageTextDataset(folder, tmp_path / "c.json", eval_tf, tok)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        ImageTextDataset(folder, tmp_path / "nope.csv", eval_tf, tok)


def test_seeded_samples_are_reproducible_and_worker_independent(folder, tmp_path, train_tf, tok):
    path = _write_jsonl(
        tmp_path / "ann.jsonl",
        [{"image": "cat.jpg", "caption": ["a cat", "the cat"]}] * 3
        + [{"image": "gone.jpg", "caption": "x"}],
    )
    ds = ImageTextDataset(folder, path, train_tf, tok)
    first, second = ds[(0, 123)], ds[(0, 123)]
    assert torch.equal(first["image"], second["image"])
    assert torch.equal(first["text"], second["text"])
    # Different seeds give different crops (the photo is near square, so the crop varies).
    assert not torch.equal(first["image"], ds[(0, 124)]["image"])
    # Same seed, different index of the same file: same pixels (the sample is (index, seed)).
    assert torch.equal(first["image"], ds[(1, 123)]["image"])

    def batches(num_workers: int) -> list[dict]:
        sampler = ResumableBatchSampler(len(ds), batch_size=2, seed=7, epoch=1)
        loader = DataLoader(
            ds, batch_sampler=sampler, collate_fn=collate_image_text, num_workers=num_workers
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SkippedSampleWarning)
            return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == 2
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["texts"], b["texts"])
        assert a["indices"].tolist() == b["indices"].tolist() and a["skipped"] == b["skipped"]
    assert sum(len(b["skipped"]) for b in serial) == 1


def test_collate_all_skipped_and_shape_mismatch():
    batch = collate_image_text([{"skipped": "x.jpg: bad", "index": 3}])
    assert batch["images"].shape == (0, 0, 0, 0) and batch["texts"].shape == (0, 0)
    assert batch["indices"].tolist() == [] and batch["skipped"] == ["x.jpg: bad"]
    good = {"image": torch.zeros(3, 8, 8), "text": torch.zeros(4, dtype=torch.long), "index": 0}
    odd = {"image": torch.zeros(3, 9, 9), "text": torch.zeros(4, dtype=torch.long), "index": 1}
    with pytest.raises(ValueError, match="index 1"):
        collate_image_text([good, odd])


# ---------------------------------------------------------------------------------------------
# WebDataset shards


@pytest.fixture
def shapes_folder(tmp_path: Path) -> Path:
    root = tmp_path / "shapes"
    ShapesDataset(11, 64, seed=1).to_folder(root, captions_per_image=3, depth=False)
    return root


def _members(shard: Path) -> dict[str, bytes]:
    with tarfile.open(shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_write_shards_round_trip(folder, tmp_path, eval_tf, tok):
    path = _write_jsonl(
        tmp_path / "ann.jsonl",
        [
            {"image": "cat.jpg", "caption": ["a cat", "the cat"]},
            {"image": "gone.jpg", "caption": "missing"},
            {"image": "shapes.png", "caption": "shapes"},
            {"image": "truncated.jpg", "caption": "cut off"},
            {"image": "shapes.png", "caption": ""},
        ],
    )
    ds = ImageTextDataset(folder, path, eval_tf, tok)
    out = tmp_path / "shards"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shards = write_shards(ds, out, samples_per_shard=2)
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedSampleWarning)]
    assert len(messages) == 2 and "gone.jpg" in messages[0] and "empty caption" in messages[1]
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar"]
    members = _members(shards[0]) | _members(shards[1])
    # Original bytes, first caption as .txt, all captions in .json; bad samples left out
    # (the truncated JPEG is copied: it is only decoded, and skipped, by the loader).
    assert members["000000000.jpg"] == (folder / "cat.jpg").read_bytes()
    assert members["000000002.png"] == (folder / "shapes.png").read_bytes()
    assert members["000000003.jpg"] == (folder / "truncated.jpg").read_bytes()
    assert members["000000000.txt"] == b"a cat"
    assert json.loads(members["000000000.json"]) == {
        "index": 0,
        "image": "cat.jpg",
        "captions": ["a cat", "the cat"],
    }
    assert not any(name.startswith(("000000001", "000000004")) for name in members)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["num_samples"] == 3 and manifest["skipped"] == 2
    assert [s["num_samples"] for s in manifest["shards"]] == [2, 1]

    # Read back in stored order: captions from the stored list, the corrupt image skipped
    # with a reason and a warning naming shard and key.
    with pytest.warns(SkippedSampleWarning, match=r"shard-000001\.tar:000000003"):
        dataset = WebDatasetImageText(out, eval_tf, tok, batch_size=8, shuffle_buffer=0)
        batches = list(webdataset_loader(dataset))
    assert len(batches) == 1
    batch = batches[0]
    assert batch["indices"].tolist() == [0, 2]
    assert len(batch["skipped"]) == 1 and "shard-000001.tar:000000003" in batch["skipped"][0]
    allowed = {0: tok(["a cat", "the cat"]).tolist(), 2: tok(["shapes"]).tolist()}
    for index, text in zip(batch["indices"].tolist(), batch["texts"].tolist(), strict=True):
        assert text in allowed[index]
    assert torch.equal(batch["images"][1], ds[2]["image"])  # eval transform: same pixels

    # Refuses to mix with old shards unless asked to overwrite.
    with pytest.raises(FileExistsError, match="overwrite"):
        write_shards([(folder / "cat.jpg", "a cat")], out)
    assert len(write_shards([(folder / "cat.jpg", "a cat")], out, overwrite=True)) == 1
    assert not (out / "shard-000001.tar").exists()


def test_write_annotated_shards_on_shapes_folder(shapes_folder, tmp_path):
    result = write_annotated_shards(
        shapes_folder, shapes_folder / "captions.csv", tmp_path / "out", samples_per_shard=4
    )
    assert result["num_shards"] == 3 and result["num_samples"] == 11 and result["skipped"] == 0
    assert json.loads(json.dumps(result)) == result  # the CLI prints it as JSON
    with open(shapes_folder / "captions.csv", newline="") as table:
        first = next(csv.DictReader(table))
    members = _members(Path(result["shards"][0]))
    assert members["000000000.txt"].decode() == first["caption"]
    assert members["000000000.png"] == (shapes_folder / first["image"]).read_bytes()


def test_split_shards_disjoint_and_covering():
    shards = [f"s{i}.tar" for i in range(11)]
    order = epoch_shards(shards, seed=3, epoch=2)
    assert sorted(order) == sorted(shards) and order != shards
    assert order == epoch_shards(shards, seed=3, epoch=2)
    parts = [split_shards(order, rank, 2, worker, 3) for rank in range(2) for worker in range(3)]
    flat = [s for part in parts for s in part]
    assert sorted(flat) == sorted(shards) and len(flat) == len(set(flat))


@pytest.fixture
def shapes_shards(shapes_folder, tmp_path) -> Path:
    out = tmp_path / "wds"
    # 11 samples in shards of 4, 4, 3: with 2 workers one streams 2 shards, the other 1, so
    # one runs out of batches first (the DataLoader then takes batches from the other only).
    write_annotated_shards(
        shapes_folder, shapes_folder / "annotations.jsonl", out, samples_per_shard=4
    )
    return out


def _collect(loader) -> list[dict]:
    return [
        {"indices": b["indices"].tolist(), "images": b["images"], "texts": b["texts"]}
        for b in loader
    ]


def test_loader_splits_ranks_and_is_deterministic(shapes_shards, train_tf, tok):
    indices = []
    for rank in range(2):
        loader = webdataset_loader(
            WebDatasetImageText(
                shapes_shards, train_tf, tok, 2, seed=5, shuffle_buffer=4, rank=rank, world_size=2
            )
        )
        indices.append([i for b in loader for i in b["indices"].tolist()])
    assert sorted(indices[0] + indices[1]) == list(range(11))
    assert not set(indices[0]) & set(indices[1])

    def run(epoch: int, num_workers: int) -> list[dict]:
        return _collect(
            webdataset_loader(
                WebDatasetImageText(shapes_shards, train_tf, tok, 3, 5, 4, epoch=epoch), num_workers
            )
        )

    a, b = run(0, 0), run(0, 0)
    assert [x["indices"] for x in a] == [x["indices"] for x in b]
    assert all(torch.equal(x["images"], y["images"]) for x, y in zip(a, b, strict=True))
    assert [x["indices"] for x in run(1, 0)] != [x["indices"] for x in a]
    # With workers the order differs, but each sample's pixels and tokens do not.
    by_index = {i: (x["images"][k], x["texts"][k]) for x in a for k, i in enumerate(x["indices"])}
    parallel = run(0, 2)
    assert sorted(i for x in parallel for i in x["indices"]) == list(range(11))
    for x in parallel:
        for k, i in enumerate(x["indices"]):
            assert torch.equal(x["images"][k], by_index[i][0])
            assert torch.equal(x["texts"][k], by_index[i][1])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_samples_reproduces_the_rest_of_the_epoch(shapes_shards, train_tf, tok, num_workers):
    def run(resume: int) -> list[dict]:
        dataset = WebDatasetImageText(
            shapes_shards, train_tf, tok, 2, seed=9, shuffle_buffer=3, resume_samples=resume
        )
        loader = webdataset_loader(dataset, num_workers=num_workers)
        return _collect(loader)

    full = run(0)
    assert sorted(i for b in full for i in b["indices"]) == list(range(11))
    sizes = [len(b["indices"]) for b in full]
    for consumed in range(1, len(full)):
        rest = run(sum(sizes[:consumed]))
        assert [b["indices"] for b in rest] == [b["indices"] for b in full[consumed:]]
        for x, y in zip(rest, full[consumed:], strict=True):
            assert torch.equal(x["images"], y["images"]) and torch.equal(x["texts"], y["texts"])
    assert run(11) == []
    with pytest.raises(ValueError, match="batch boundary"):
        webdataset_loader(
            WebDatasetImageText(shapes_shards, train_tf, tok, 2, 9, 3, resume_samples=1),
            num_workers,
        )
    with pytest.raises(ValueError, match="more than"):
        webdataset_loader(
            WebDatasetImageText(shapes_shards, train_tf, tok, 2, 9, 3, resume_samples=12),
            num_workers,
        )


def test_resume_plan_without_manifest_counts_shards(shapes_shards, train_tf, tok):
    def dataset(**kwargs) -> WebDatasetImageText:
        return WebDatasetImageText(
            shapes_shards, train_tf, tok, 2, 9, 3, resume_samples=4, **kwargs
        )

    from_manifest = dataset()
    counts, plan = from_manifest.worker_sample_counts(2), from_manifest.resume_plan(2)
    assert sorted(counts) in ([3, 8], [4, 7]) and from_manifest.num_batches(2) == 6
    given = dataset(
        shard_sizes={"shard-000000.tar": 4, "shard-000001.tar": 4, "shard-000002.tar": 3}
    )
    assert given.worker_sample_counts(2) == counts and given.resume_plan(2) == plan
    (shapes_shards / MANIFEST).unlink()
    scanned = sorted(str(p) for p in shapes_shards.glob("*.tar"))
    assert dataset().worker_sample_counts(2) == counts and dataset().resume_plan(2) == plan
    assert WebDatasetImageText(scanned, train_tf, tok, 2, 9, 3).urls == scanned


# ---------------------------------------------------------------------------------------------
# Synthetic shapes

_DESC = rf"(small|large) ({'|'.join(SCENE_COLORS)}) ({'|'.join(SCENE_SHAPES)})"
_CELLS = {
    "in the top left corner": (0, 0), "at the top": (0, 1), "in the top right corner": (0, 2),
    "on the left": (1, 0), "in the center": (1, 1), "on the right": (1, 2),
    "in the bottom left corner": (2, 0), "at the bottom": (2, 1),
    "in the bottom right corner": (2, 2),
}  # fmt: skip
_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _find(objects, match: tuple[str, ...]):
    size, color, shape = match
    found = [o for o in objects if (o.size, o.color, o.shape) == (size, color, shape)]
    assert len(found) == 1, (match, objects)
    return found[0]


def _check_caption(text: str, objects) -> str:
    for prefix in ("a picture of ", "an image showing "):
        text = text.removeprefix(prefix)
    described = re.findall(_DESC, text)
    assert described, text
    for match in described:
        _find(objects, match)  # every described object exists
    relation = re.fullmatch(
        rf"a {_DESC} (to the left of|to the right of|above|below) a {_DESC}", text
    )
    if relation:
        a, b = _find(objects, relation.groups()[:3]), _find(objects, relation.groups()[4:])
        holds = {
            "to the left of": a.col < b.col,
            "to the right of": a.col > b.col,
            "above": a.row < b.row,
            "below": a.row > b.row,
        }
        assert holds[relation.group(4)], (text, a, b)
        return "relation"
    position = re.fullmatch(rf"a {_DESC} (.+)", text)
    if position and position.group(4) in _CELLS:
        obj = _find(objects, position.groups()[:3])
        assert (obj.row, obj.col) == _CELLS[position.group(4)], (text, obj)
        return "position"
    count = re.match(r"(\w+) shapes: ", text)
    if count:
        assert _NUMBER_WORDS.index(count.group(1)) == len(objects)
    # A list mentions every object, left to right.
    assert len(described) == len(objects), text
    cols = [_find(objects, m).col for m in described]
    assert cols == sorted(cols), text
    return "count" if count else "list"


def test_scenes_are_deterministic_and_rendered_as_described():
    image_a, objects_a = generate_scene(random.Random(42), 64, 4)
    image_b, objects_b = generate_scene(random.Random(42), 64, 4)
    assert objects_a == objects_b and np.array_equal(np.asarray(image_a), np.asarray(image_b))
    assert generate_scene(random.Random(43), 64, 4)[1] != objects_a
    for seed in range(30):
        image, objects = generate_scene(random.Random(seed), 64, 5)
        assert 1 <= len(objects) <= 5
        assert len({(o.row, o.col) for o in objects}) == len(objects)
        assert len({(o.color, o.shape) for o in objects}) == len(objects)
        pixels = np.asarray(image)
        for obj in objects:
            # Each object's colour is drawn at its centre.
            assert tuple(pixels[int(obj.y), int(obj.x)]) == SCENE_COLORS[obj.color]
        depth = render_depth(objects, 64)
        assert depth.shape == (64, 64) and depth.dtype == np.float32
        on_object = np.any(pixels != np.array(BACKGROUND, dtype=np.uint8), axis=-1)
        assert np.array_equal(on_object, depth < 1.0)
        for obj in objects:
            assert depth[int(obj.y), int(obj.x)] == np.float32(obj.depth)


def test_captions_and_questions_match_the_objects():
    kinds = set()
    for seed in range(60):
        rng = random.Random(seed)
        _, objects = generate_scene(rng, 64, 4)
        assert _check_caption(caption(objects), objects) == "list"
        for _ in range(5):
            kinds.add(_check_caption(caption(objects, rng), objects))
        qa = questions(objects)
        assert len({q["question"] for q in qa}) == len(qa)
        for q in qa:
            question, answer = q["question"], q["answer"]
            if question == "how many shapes are there?":
                assert int(answer) == len(objects)
            elif m := re.fullmatch(r"how many (\w+)s are there\?", question):
                assert int(answer) == sum(o.shape == m.group(1) for o in objects)
            elif m := re.fullmatch(r"how many (\w+) shapes are there\?", question):
                key = "size" if m.group(1) in ("small", "large") else "color"
                assert int(answer) == sum(getattr(o, key) == m.group(1) for o in objects)
            elif m := re.fullmatch(r"is there a (\w+) (\w+)\?", question):
                present = any((o.color, o.shape) == m.groups() for o in objects)
                assert answer == ("yes" if present else "no")
            elif m := re.fullmatch(r"what color is the (?:(small|large) )?(\w+)\?", question):
                matches = [
                    o for o in objects
                    if o.shape == m.group(2) and m.group(1) in (None, o.size)
                ]  # fmt: skip
                assert len(matches) == 1 and matches[0].color == answer
            elif m := re.fullmatch(r"what shape is the (\w+) object\?", question):
                (obj,) = [o for o in objects if o.color == m.group(1)]
                assert obj.shape == answer
            elif m := re.fullmatch(r"what size is the (\w+) (\w+)\?", question):
                (obj,) = [o for o in objects if (o.color, o.shape) == m.groups()]
                assert obj.size == answer
            elif m := re.fullmatch(
                r"is the (\w+) (\w+) (to the left of|above) the (\w+) (\w+)\?", question
            ):
                (a,) = [o for o in objects if (o.color, o.shape) == m.group(1, 2)]
                (b,) = [o for o in objects if (o.color, o.shape) == m.group(4, 5)]
                truth = a.col < b.col if m.group(3) == "to the left of" else a.row < b.row
                assert answer == ("yes" if truth else "no")
            else:
                pytest.fail(f"unchecked question {question!r}")
    assert kinds == {"list", "count", "relation", "position"}


def test_shapes_dataset_contract_and_folder(tmp_path, train_tf, tok):
    ds = ShapesDataset(6, 64, seed=0, transform=train_tf, tokenizer=tok)
    sample = ds[(2, 11)]
    assert sample["image"].shape == (3, 64, 64) and sample["text"].shape == (CONTEXT,)
    again = ds[(2, 11)]
    assert torch.equal(sample["image"], again["image"]) and torch.equal(
        sample["text"], again["text"]
    )
    other = [ds[(2, s)] for s in range(12, 20)]
    assert any(not torch.equal(sample["image"], o["image"]) for o in other)
    assert any(not torch.equal(sample["text"], o["text"]) for o in other)
    # A fresh dataset object (e.g. in another worker) renders the same scene.
    fresh = ShapesDataset(6, 64, seed=0, transform=train_tf, tokenizer=tok)
    assert torch.equal(fresh[(2, 11)]["image"], sample["image"])
    assert fresh.scene(2)[1] != ShapesDataset(6, 64, 0, split="test").scene(2)[1]

    paths = ds.to_folder(tmp_path / "shapes", n=4)
    lines = [json.loads(line) for line in paths["jsonl"].read_text().splitlines()]
    assert len(lines) == 4 and all(len(line["caption"]) >= 1 for line in lines)
    assert (tmp_path / "shapes" / lines[0]["depth"]).is_file()
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "shapes" / lines[3]["image"])), np.asarray(ds.scene(3)[0])
    )
    assert lines[1]["questions"] == ds.questions(1)
    for table in (paths["jsonl"], paths["csv"]):
        folder_ds = ImageTextDataset(paths["root"], table, train_tf, tok)
        assert len(folder_ds) == 4 and "image" in folder_ds[(0, 1)]


def test_truncated_or_missing_shard_is_reported_not_raised(shapes_shards, eval_tf, tok):
    shards = sorted(shapes_shards.glob("shard-*.tar"))
    data = shards[0].read_bytes()
    shards[0].write_bytes(data[: len(data) // 2])
    urls = [str(p) for p in shards] + [str(shapes_shards / "absent.tar")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = WebDatasetImageText(urls, eval_tf, tok, batch_size=4, shuffle_buffer=0)
        batches = list(webdataset_loader(dataset))
    skipped = [reason for b in batches for reason in b["skipped"]]
    assert any("shard-000000.tar" in r and "truncated or corrupt" in r for r in skipped), skipped
    assert any("cannot open shard" in r and "absent.tar" in r for r in skipped), skipped
    good = [i for b in batches for i in b["indices"].tolist()]
    assert set(range(4, 11)) <= set(good) and len(good) < 11
    assert any(issubclass(w.category, SkippedSampleWarning) for w in caught)
