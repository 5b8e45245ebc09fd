"""`vlkit data filter`: CLIP-score filtering of a CSV and of a shard set keeps exactly the pairs
scoring at least the threshold (scores recomputed here with the model), counts what it drops,
and writes files the training data readers accept."""

import csv
import json

import pytest
import torch
from PIL import Image

import vlkit
from vlkit.cli import main
from vlkit.data.datasets.image_text import ImageTextDataset, SkippedSampleWarning
from vlkit.data.shards import expand_urls, write_annotated_shards
from vlkit.data.shards.read import raw_samples
from vlkit.evaluation.embeddings import encode_image_files, encode_texts
from vlkit.recipes.data_filter import filter_by_clip_score

CAPTIONS = ["a red square", "a green circle", "a blue star", "a cat", "a dog", "a yellow sun",
            "a grey sky", "a purple square"]  # fmt: skip


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """8 usable image-caption pairs, one line with a missing image, one with an empty caption."""
    root = tmp_path_factory.mktemp("pairs")
    rows = []
    for i, text in enumerate(CAPTIONS):
        Image.new("RGB", (32, 32), (30 * i, 255 - 30 * i, 90)).save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": text, "source": f"site{i % 2}"})
    rows.append({"image": "missing.png", "caption": "a ghost", "source": "site0"})
    rows.append({"image": "0.png", "caption": " ", "source": "site1"})
    with open(root / "pairs.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, ["image", "caption", "source"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def scores(checkpoint, pairs):
    """The CLIP score of each usable pair, computed with the library's encoders."""
    model = vlkit.from_pretrained(str(checkpoint)).eval()
    tokenizer = vlkit.get_tokenizer(
        str(checkpoint), context_length=model.config.text.context_length
    )
    images = encode_image_files(model, vlkit.get_transform(model),
                                [pairs / f"{i}.png" for i in range(len(CAPTIONS))])  # fmt: skip
    return (images * encode_texts(model, tokenizer, CAPTIONS)).sum(dim=-1)  # (8,)


def test_csv_filter_keeps_the_pairs_above_the_threshold(checkpoint, pairs, scores, tmp_path):
    threshold = float(scores.median())
    expected = [i for i in range(len(CAPTIONS)) if scores[i] >= threshold]
    out = tmp_path / "filtered"
    report = filter_by_clip_score(checkpoint, pairs / "pairs.csv", out, threshold, progress=False)
    assert report["scored"] == 8 and report["unusable"] == 2
    assert report["kept"] == len(expected) and report["dropped_low_score"] == 8 - len(expected)
    assert sum(report["histogram"]["counts"]) == 8
    assert any("missing.png" in reason for reason in report["unusable_examples"])
    with open(out / "pairs.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["caption"] for row in rows] == [CAPTIONS[i] for i in expected]
    assert list(rows[0]) == ["image", "caption", "source", "clip_score"]  # every column kept
    for row, i in zip(rows, expected, strict=True):
        assert float(row["clip_score"]) == pytest.approx(float(scores[i]), abs=1e-5)
        assert row["source"] == f"site{i % 2}"
    # The filtered file trains as it is: absolute image paths, any root.
    dataset = ImageTextDataset(tmp_path, out / "pairs.csv", lambda image, generator=None:
                               torch.zeros(3, 4, 4), lambda texts: torch.zeros(1, 3))  # fmt: skip
    assert all("skipped" not in dataset[i] for i in range(len(dataset)))
    assert json.loads((out / "filter_report.json").read_text())["kept"] == len(expected)
    assert (out / "score_histogram.png").stat().st_size > 0


def test_shard_filter_copies_the_kept_samples(checkpoint, pairs, scores, tmp_path):
    shards = tmp_path / "shards"
    with pytest.warns(SkippedSampleWarning):  # the two unusable lines are not sharded
        write_annotated_shards(pairs, pairs / "pairs.csv", shards, samples_per_shard=3)
    threshold = float(scores.median())
    expected = {f"{i:09d}" for i in range(len(CAPTIONS)) if scores[i] >= threshold}
    out = tmp_path / "filtered_shards"
    report = filter_by_clip_score(checkpoint, shards, out, threshold, samples_per_shard=2,
                                  progress=False)  # fmt: skip
    assert report["kept"] == len(expected) and report["scored"] == 8
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == len(expected)
    assert [s["num_samples"] for s in manifest["shards"]] == [2] * (len(expected) // 2) + (
        [1] if len(expected) % 2 else []
    )
    originals = {raw["__key__"]: raw for url in expand_urls(shards) for raw in raw_samples(url)}
    kept = [raw for url in expand_urls(out) for raw in raw_samples(url)]
    assert {raw["__key__"] for raw in kept} == expected
    for raw in kept:  # members copied byte for byte, the score added to the JSON
        assert raw["png"] == originals[raw["__key__"]]["png"]
        assert raw["txt"] == originals[raw["__key__"]]["txt"]
        assert json.loads(raw["json"])["clip_score"] >= threshold - 1e-6


def test_cli_reports_counts_and_refuses_a_used_out(checkpoint, pairs, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["data", "filter", "--model", str(checkpoint), "--data", str(pairs / "pairs.csv"),
            "--min-score", "-1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["kept"], printed["dropped_low_score"], printed["unusable"]) == (8, 0, 2)
    assert main(argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert main([*argv[:-4], "--min-score", "2", "--out", str(tmp_path / "x")]) == 2
    assert "--min-score" in capsys.readouterr().err
