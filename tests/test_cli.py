"""The command line: zero-shot ranking, embeddings, and one-line errors with exit status 2."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

import vlkit
from vlkit.cli import main


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos")
    Image.fromarray(skdata.astronaut()).save(directory / "astronaut.png")
    Image.fromarray(skdata.coffee()).save(directory / "coffee.jpg")
    return directory


def test_zeroshot_json_ranks_labels_with_softmax_probabilities(checkpoint, photos, capsys):
    labels = ["a person", "a cup of coffee", "a cat"]
    code = main(["zeroshot", str(photos / "astronaut.png"), str(photos / "coffee.jpg"),
                 "--model", str(checkpoint), "--labels", ",".join(labels), "--templates",
                 "cifar", "--json"])  # fmt: skip
    assert code == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == [
        str(photos / "astronaut.png"),
        str(photos / "coffee.jpg"),
    ]
    model = vlkit.from_pretrained(checkpoint)
    tokenizer, transform = vlkit.get_tokenizer(checkpoint), vlkit.get_transform(checkpoint)
    classifier = vlkit.evaluation.build_zero_shot_classifier(
        model, tokenizer, labels, vlkit.evaluation.load_templates("cifar")
    )
    for result in results:
        probs = [item["probability"] for item in result["ranking"]]
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        with torch.no_grad():
            image = model.encode_image(
                transform(Image.open(result["image"])).unsqueeze(0), normalize=True
            )
            expected = (model.temperature() * image @ classifier.T).softmax(-1)[0]
        got = {item["label"]: item["probability"] for item in result["ranking"]}
        for label, p in zip(labels, expected.tolist(), strict=True):
            assert got[label] == pytest.approx(p, abs=1e-5)


def test_embed_images_and_texts(checkpoint, photos, tmp_path):
    assert main(["embed", "--model", str(checkpoint), "--images", str(photos), "--out",
                 str(tmp_path / "img.npy")]) == 0  # fmt: skip
    embeddings = np.load(tmp_path / "img.npy")
    assert embeddings.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    names = json.loads((tmp_path / "img.json").read_text())["inputs"]
    assert [n.split("/")[-1] for n in names] == ["astronaut.png", "coffee.jpg"]
    (tmp_path / "texts.txt").write_text("a photo of a cat\n\na dog\n")
    assert main(["embed", "--model", str(checkpoint), "--texts", str(tmp_path / "texts.txt"),
                 "--out", str(tmp_path / "txt.npy")]) == 0  # fmt: skip
    texts = np.load(tmp_path / "txt.npy")
    model = vlkit.from_pretrained(checkpoint)
    with torch.no_grad():
        expected = model.encode_text(vlkit.get_tokenizer(checkpoint)(["a photo of a cat", "a dog"]),
                                     normalize=True)  # fmt: skip
    np.testing.assert_allclose(texts, expected.numpy(), atol=1e-6)


def _run_error(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("vlkit: error:")
    return err


def test_bad_inputs_give_one_line_errors(checkpoint, photos, tmp_path, capsys):
    base = ["--model", str(checkpoint), "--labels", "a,b"]
    err = _run_error(["zeroshot", str(tmp_path / "missing.jpg"), *base], capsys)
    assert "missing.jpg" in err
    (tmp_path / "notes.txt").write_text("not an image")
    assert "notes.txt" in _run_error(["zeroshot", str(tmp_path / "notes.txt"), *base], capsys)
    whole = (photos / "coffee.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    assert "cut.jpg" in _run_error(["zeroshot", str(tmp_path / "cut.jpg"), *base], capsys)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    err = _run_error(["zeroshot", str(photos / "coffee.jpg"), "--model", str(tmp_path / "bert"),
                      "--labels", "a,b"], capsys)  # fmt: skip
    assert "bert" in err
    err = _run_error(["embed", "--model", str(checkpoint), "--images", str(tmp_path / "none"),
                      "--out", str(tmp_path / "x.npy")], capsys)  # fmt: skip
    assert "no such directory" in err


def test_bad_train_settings_give_one_line_errors_naming_the_key(capsys):
    err = _run_error(["train", "optim.lrr=1"], capsys)
    assert "unknown key 'optim.lrr' (allowed: batch_size," in err and "'optim.lr'?" in err
    err = _run_error(["train", "batch_size=abc"], capsys)
    assert err == "vlkit: error: optim.batch_size: expected an int, got 'abc'"
    err = _run_error(["train", "data=imagenet"], capsys)
    assert "data.source: expected one of easy_vqa, shapes, folder, webdataset" in err
    assert "no such file" in _run_error(["train", "--config", "nope"], capsys)
