"""The web app: its JSON answers equal the library's, bad input gets 400/404 with one line, and
`vlkit serve` answers over HTTP on the loopback interface."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data as skdata

import vlkit
from vlkit.cli import zeroshot
from vlkit.inference.image_search import ImageSearcher
from vlkit.inference.index import EmbeddingIndex
from vlkit.serve import create_app
from vlkit.serve.app import parse_labels

PHOTOS = {"astronaut.png": skdata.astronaut, "coffee.jpg": skdata.coffee,
          "chelsea.png": skdata.chelsea, "rocket.jpg": skdata.rocket}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    vlkit.create_model("tiny").save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos")
    for name, load in PHOTOS.items():
        Image.fromarray(load()).save(directory / name)
    return directory


@pytest.fixture(scope="module")
def index_dir(checkpoint, photos, tmp_path_factory):
    model, transform = vlkit.from_pretrained(str(checkpoint)), vlkit.get_transform(str(checkpoint))
    paths = sorted(str(p) for p in photos.iterdir())
    with torch.no_grad():
        pixels = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
        embeddings = model.encode_image(pixels, normalize=True)
    directory = tmp_path_factory.mktemp("index")
    EmbeddingIndex.build(embeddings, paths, metadata={"model": str(checkpoint)}).save(directory)
    return directory


@pytest.fixture(scope="module")
def client(checkpoint, index_dir):
    return TestClient(create_app(str(checkpoint), str(index_dir)))


def _upload(path):
    return {"image": (path.name, path.read_bytes(), "application/octet-stream")}


def test_page_and_info(client, checkpoint):
    page = client.get("/")
    assert page.status_code == 200
    assert 'id="zeroshot-form"' in page.text and 'id="search-form"' in page.text
    info = client.get("/api/info").json()
    assert info["model"] == str(checkpoint)
    assert info["embed_dim"] == vlkit.PRESETS["tiny"].embed_dim
    assert info["index_size"] == len(PHOTOS)


@pytest.mark.parametrize("templates", ["none", "cifar"])
def test_zeroshot_equals_the_cli_library_function(client, checkpoint, photos, templates):
    labels = ["an astronaut", "a cup of coffee", "a cat", "a rocket"]
    expected = zeroshot([str(photos / "coffee.jpg")], str(checkpoint), labels, templates)[0]
    answer = client.post("/api/zeroshot", files=_upload(photos / "coffee.jpg"),
                         data={"labels": ", ".join(labels), "templates": templates})  # fmt: skip
    assert answer.status_code == 200, answer.text
    ranking = answer.json()["ranking"]
    assert [r["label"] for r in ranking] == [r["label"] for r in expected["ranking"]]
    np.testing.assert_allclose(
        [r["probability"] for r in ranking],
        [r["probability"] for r in expected["ranking"]],
        atol=1e-6,
    )
    assert sum(r["probability"] for r in ranking) == pytest.approx(1.0, abs=1e-5)


def test_search_equals_the_searcher(client, checkpoint, index_dir, photos):
    model, tokenizer, transform = vlkit.api.load_clip(str(checkpoint))
    searcher = ImageSearcher(EmbeddingIndex.load(index_dir), model, tokenizer, transform)
    expected = searcher.search_text("a photo of a cat", k=3)
    hits = client.post("/api/search", json={"text": "a photo of a cat", "k": 3}).json()["hits"]
    assert [h["position"] for h in hits] == [h.position for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in expected], atol=1e-6)
    assert len(hits) == 3 and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]

    # Image -> image: the query photo finds itself first, with cosine similarity 1.
    hits = client.post("/api/search/image", files=_upload(photos / "rocket.jpg"),
                       data={"k": "2"}).json()["hits"]  # fmt: skip
    assert hits[0]["name"] == "rocket.jpg"
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)

    # The hit's URL serves exactly that file.
    image = client.get(hits[0]["url"])
    assert image.status_code == 200
    assert image.content == (photos / "rocket.jpg").read_bytes()


def test_bad_input_gets_one_line_errors(client, photos, tmp_path):
    def detail(response, status):
        assert response.status_code == status, response.text
        message = response.json()["detail"]
        assert isinstance(message, str) and "\n" not in message
        return message

    labels = {"labels": "a cat, a dog"}
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((photos / "coffee.jpg").read_bytes()[:300])
    assert "broken.jpg" in detail(client.post("/api/zeroshot", files=_upload(broken),
                                              data=labels), 400)  # fmt: skip
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    assert "notes.txt" in detail(
        client.post("/api/zeroshot", files=_upload(notes), data=labels), 400
    )
    assert "labels" in detail(client.post("/api/zeroshot", files=_upload(photos / "coffee.jpg"),
                                          data={"labels": " , "}), 400)  # fmt: skip
    assert "templates" in detail(client.post("/api/zeroshot", files=_upload(photos / "coffee.jpg"),
                                             data={**labels, "templates": "../etc"}), 400)  # fmt: skip
    assert "index has 4" in detail(client.get("/api/images/4"), 404)
    assert client.get("/api/images/-1").status_code == 404
    assert client.post("/api/search", json={"text": "x", "k": 0}).status_code == 422


def test_without_an_index_search_is_404_and_zeroshot_works(checkpoint, photos):
    client = TestClient(create_app(str(checkpoint)))
    assert client.get("/api/info").json()["index_size"] == 0
    assert "--index" in client.post("/api/search", json={"text": "a cat"}).json()["detail"]
    answer = client.post("/api/zeroshot", files=_upload(photos / "chelsea.png"),
                         data={"labels": "a cat\na dog"})  # fmt: skip
    assert [r["label"] for r in answer.json()["ranking"]] != []
    assert len(answer.json()["ranking"]) == 2


def test_parse_labels_keeps_order_and_drops_blanks():
    assert parse_labels(" a cat,, a dog \n\n a car,") == ["a cat", "a dog", "a car"]


def test_the_serve_command_answers_over_http(checkpoint, index_dir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "vlkit", "serve", "--model", str(checkpoint),
               "--index", str(index_dir), "--port", str(port)]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        info, deadline = None, time.monotonic() + 60
        while info is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=2) as r:
                    info = json.load(r)
            except OSError:
                time.sleep(0.3)
        assert info is not None, server.stdout.read().decode() if server.poll() is not None else ""
        assert info["index_size"] == len(PHOTOS)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_serve_rejects_a_generative_checkpoint_in_one_line(tmp_path, capsys):
    from vlkit.cli import main

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_an_uploaded_rgba_png_is_decoded_like_the_same_file(client, checkpoint, tmp_path):
    # Transparent red pixels: a decoder that drops alpha sees red, ours composites onto white.
    path = tmp_path / "clear.png"
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(path)
    labels = ["white", "red", "a cat"]
    expected = zeroshot([str(path)], str(checkpoint), labels)[0]["ranking"]
    answer = client.post("/api/zeroshot", files={"image": ("clear.png", path.read_bytes())},
                         data={"labels": ",".join(labels)})  # fmt: skip
    assert answer.json()["image"] == "clear.png"
    got = {r["label"]: r["probability"] for r in answer.json()["ranking"]}
    for row in expected:
        assert got[row["label"]] == pytest.approx(row["probability"], abs=1e-6)
