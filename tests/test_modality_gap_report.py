"""The modality gap as a report: the numbers against a hand computation, the PCA projection,
`vlkit gap` (gap.json fields, gap.png, one-line errors), `vlkit eval` and the demo's evaluator."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import vlkit
from vlkit.cli import main
from vlkit.data.images import load_image
from vlkit.evaluation.modality_gap import modality_gap_metrics
from vlkit.recipes.demo_evaluation import EasyVQAEvaluator
from vlkit.recipes.modality_gap_report import read_image_text_pairs
from vlkit.viz.modality_gap_plot import pca_2d

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_gap_metrics_equal_a_hand_computation():
    # Images (1, 0) and (0, 2) normalise to (1, 0), (0, 1): centroid (0.5, 0.5). Texts (-3, 0)
    # and (0, 5) normalise to (-1, 0), (0, 1): centroid (-0.5, 0.5). Gap (1, 0): length 1.
    images = np.array([[1.0, 0.0], [0.0, 2.0]])
    texts = torch.tensor([[-3.0, 0.0], [0.0, 5.0]])
    # Text 0 describes image 1 (cos 0, distance sqrt 2); text 1 image 1 (cos 1, distance 0).
    got = modality_gap_metrics(images, texts, text_image=[1, 1])
    assert got["modality_gap"] == pytest.approx(1.0, abs=1e-12)
    assert got["image_centroid_norm"] == pytest.approx(math.sqrt(0.5), abs=1e-12)
    assert got["text_centroid_norm"] == pytest.approx(math.sqrt(0.5), abs=1e-12)
    assert got["mean_paired_cosine"] == pytest.approx(0.5, abs=1e-12)
    assert got["mean_paired_distance"] == pytest.approx(math.sqrt(2) / 2, abs=1e-12)
    # Unpaired: no pair statistics; each image counts once however many captions it has.
    unpaired = modality_gap_metrics(torch.from_numpy(images), texts)
    assert set(unpaired) == {"modality_gap", "image_centroid_norm", "text_centroid_norm"}
    assert unpaired["modality_gap"] == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="2 image indices for 3 texts"):
        modality_gap_metrics(images, torch.ones(3, 2), text_image=[0, 1])
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        modality_gap_metrics(images, texts, text_image=[0, 2])


def test_pca_2d_matches_numpy_and_is_deterministic():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(40, 6)) * np.array([5.0, 2.0, 0.5, 0.1, 0.1, 0.1])
    projected, ratio = pca_2d(torch.from_numpy(points))
    centred = points - points.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    want = centred @ vt[:2].T
    # Up to the sign of each component; ours puts the largest loading positive.
    for k in range(2):
        sign = np.sign(vt[k][np.abs(vt[k]).argmax()])
        np.testing.assert_allclose(projected[:, k].numpy(), sign * want[:, k], atol=1e-10)
    np.testing.assert_allclose(ratio.numpy(), (s**2 / (s**2).sum())[:2], atol=1e-12)
    # The cloud mirrored through the origin: the same axes (signs fixed by the loadings), so
    # every point lands mirrored too, whatever sign the SVD routine happened to return.
    again, _ = pca_2d(torch.from_numpy(-points))
    np.testing.assert_allclose(again.numpy(), -projected.numpy(), atol=1e-9)


@pytest.fixture(scope="module")
def image_text_set(tmp_path_factory):
    """Five solid-colour images with two captions each, as a COCO JSON and as a CSV."""
    root = tmp_path_factory.mktemp("pairs")
    colours = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (10, 10, 160),
               "yellow": (240, 230, 30), "grey": (120, 120, 120)}  # fmt: skip
    images, annotations, rows = [], [], []
    for i, (name, rgb) in enumerate(colours.items()):
        Image.new("RGB", (36, 30), rgb).save(root / f"{i}.png")
        images.append({"id": 50 + i, "file_name": f"{i}.png"})
        for j, text in enumerate([f"a {name} square", f"something {name}"]):
            annotations.append({"id": 10 * i + j, "image_id": 50 + i, "caption": text})
            rows.append((f"{i}.png", text))
    coco = root / "captions.json"
    coco.write_text(json.dumps({"images": images, "annotations": annotations}))
    with open(root / "pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    return root, [root / im["file_name"] for im in images], [a["caption"] for a in annotations]


@pytest.fixture(scope="module")
def before_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("before")
    torch.manual_seed(1)
    vlkit.create_model("tiny").save_pretrained(directory)
    return directory


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _expected(checkpoint, paths, captions):
    model = vlkit.from_pretrained(str(checkpoint)).eval()
    tokenizer = vlkit.get_tokenizer(
        str(checkpoint), context_length=model.config.text.context_length
    )
    transform = vlkit.get_transform(model)
    with torch.no_grad():
        image_emb = model.encode_image(torch.stack([transform(load_image(p)) for p in paths]))
        text_emb = model.encode_text(tokenizer(captions))
    return modality_gap_metrics(image_emb, text_emb, [j // 2 for j in range(len(captions))])


def test_gap_command_writes_json_and_plot(
    checkpoint, before_checkpoint, image_text_set, tmp_path, capsys
):
    root, paths, captions = image_text_set
    out = tmp_path / "gap"
    argv = ["gap", "--model", str(checkpoint), "--before", str(before_checkpoint),
            "--data", str(root / "captions.json"), "--out", str(out), "--batch-size", "2"]  # fmt: skip
    code, stdout, err = _run(argv, capsys)
    assert code == 0, err
    printed = json.loads(stdout)
    assert json.loads((out / "gap.json").read_text()) == printed
    assert (out / "gap.png").read_bytes()[:8] == PNG_MAGIC
    assert (printed["num_images"], printed["num_texts"], printed["plot"]) == (5, 10, "gap.png")
    for side, model in (("after", checkpoint), ("before", before_checkpoint)):
        want = _expected(model, paths, captions)
        for key, value in want.items():
            assert printed[side][key] == pytest.approx(value, abs=1e-6), (side, key)
        assert 0 < printed[side]["pca_explained_variance"] <= 1 + 1e-9
    change = printed["after"]["modality_gap"] - printed["before"]["modality_gap"]
    assert printed["gap_change"] == pytest.approx(change)
    assert printed["before_model"] == str(before_checkpoint)


def test_csv_and_folder_read_as_the_coco_file(image_text_set):
    root, paths, captions = image_text_set
    coco = read_image_text_pairs(root / "captions.json")
    assert (coco.images, coco.captions) == (paths, captions)
    assert coco.caption_image == [j // 2 for j in range(10)]
    for data in (root / "pairs.csv", root):  # the folder holds captions.json: read first
        other = read_image_text_pairs(data)
        assert (other.images, other.captions, other.caption_image) == (
            coco.images, coco.captions, coco.caption_image)  # fmt: skip
    first = coco.first(2)
    assert (len(first.images), first.captions, first.caption_image) == (
        2,
        captions[:4],
        [0, 0, 1, 1],
    )


def test_gap_command_errors_are_one_line(checkpoint, image_text_set, tmp_path, capsys):
    root, _, _ = image_text_set
    model = ["--model", str(checkpoint)]
    (tmp_path / "notes.txt").write_text("x")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("image,text\n0.png,a red square\n")
    done = tmp_path / "done"
    done.mkdir()
    (done / "gap.json").write_text("{}")
    cases = [
        ([*model, "--data", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o1")],
         "--data", "no such file"),
        ([*model, "--data", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "o2")],
         "unknown file type '.txt'", ".csv"),
        ([*model, "--data", str(bad_csv), "--images", str(root), "--out", str(tmp_path / "o3")],
         "bad.csv", "caption"),
        ([*model, "--data", str(root / "captions.json"), "--out", str(done)],
         "gap.json exists", "--overwrite"),
        (["--model", str(tmp_path / "no_model"), "--data", str(root), "--out", str(tmp_path / "o4")],
         "--model", "no such model directory"),
        ([*model, "--data", str(tmp_path), "--out", str(tmp_path / "o5")],
         "a folder without", "captions.csv"),
        ([*model, "--data", str(root), "--out", str(tmp_path / "o6"), "--max-images", "0"],
         "--max-images", "at least 1"),
    ]  # fmt: skip
    for argv, *needles in cases:
        code, _, err = _run(["gap", *argv], capsys)
        last = err.strip().splitlines()[-1]
        assert code == 2 and "Traceback" not in err, (argv, err)
        for needle in needles:
            assert needle in last, (needle, last)
    assert (done / "gap.json").read_text() == "{}"  # not replaced
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3" / "gap.json").exists()


def test_eval_retrieval_reports_the_gap(checkpoint, image_text_set, tmp_path, capsys):
    root, paths, captions = image_text_set
    argv = ["eval", "retrieval", "--model", str(checkpoint), "--captions",
            str(root / "captions.json"), "--images", str(root), "--out", str(tmp_path / "rt")]  # fmt: skip
    code, stdout, err = _run(argv, capsys)
    assert code == 0, err
    printed = json.loads(stdout)
    want = _expected(checkpoint, paths, captions)
    assert printed["modality_gap"] == pytest.approx(want["modality_gap"], abs=1e-6)
    assert printed["mean_paired_cosine"] == pytest.approx(want["mean_paired_cosine"], abs=1e-6)
    assert "| modality_gap |" in (tmp_path / "rt" / "report.md").read_text()


def test_demo_evaluator_reports_the_gap(checkpoint):
    model = vlkit.from_pretrained(str(checkpoint)).eval()
    tokenizer = vlkit.get_tokenizer(
        str(checkpoint), context_length=model.config.text.context_length
    )
    images = torch.rand(12, 3, 32, 32)
    labels = torch.arange(12) % 5
    evaluator = EasyVQAEvaluator(tokenizer, ["a {}."], batch_size=5)
    scores = evaluator.evaluate(model, (images, labels))
    gap, image_emb, caption_emb = evaluator.modality_gap(model, (images, labels))
    assert caption_emb.shape == image_emb.shape == (12, model.config.embed_dim)
    want = modality_gap_metrics(image_emb, caption_emb, range(12))
    for key in ("modality_gap", "mean_paired_cosine"):
        assert gap[key] == pytest.approx(want[key], abs=1e-12)
        assert scores[key] == pytest.approx(want[key], abs=1e-5)


def test_eval_zeroshot_reports_the_gap_to_the_class_weights(checkpoint, tmp_path, capsys):
    root = tmp_path / "classes"
    paths = []
    for name, rgb in (("red", (220, 20, 20)), ("green", (20, 200, 40))):
        (root / name).mkdir(parents=True)
        for shade in (0, 60):
            path = root / name / f"{shade}.png"
            Image.new("RGB", (30, 30), tuple(max(0, c - shade) for c in rgb)).save(path)
            paths.append(path)
    argv = ["eval", "zeroshot", "--model", str(checkpoint), "--images", str(root),
            "--templates", "none", "--out", str(tmp_path / "zs")]  # fmt: skip
    code, stdout, err = _run(argv, capsys)
    assert code == 0, err
    model = vlkit.from_pretrained(str(checkpoint)).eval()
    tokenizer = vlkit.get_tokenizer(
        str(checkpoint), context_length=model.config.text.context_length
    )
    transform = vlkit.get_transform(model)
    with torch.no_grad():
        image_emb = model.encode_image(torch.stack([transform(load_image(p)) for p in paths]))
        weights = model.encode_text(tokenizer(["green", "red"]))  # sorted folders, one template
    want = modality_gap_metrics(image_emb, weights)["modality_gap"]
    assert json.loads(stdout)["modality_gap"] == pytest.approx(want, abs=1e-6)
    assert "| modality_gap |" in (tmp_path / "zs" / "report.md").read_text()
