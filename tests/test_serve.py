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
from vlkit.inference.embed import zeroshot
from vlkit.inference.image_search import ImageSearcher
from vlkit.inference.index import EmbeddingIndex
from vlkit.serve import create_app
from vlkit.serve.app import parse_labels

PHOTOS = {"astronaut.png": skdata.astronaut, "coffee.jpg": skdata.coffee,
          "chelsea.png": skdata.chelsea, "rocket.jpg": skdata.rocket}  # fmt: skip


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


def _client(app):
    # The app answers only Host names it serves (loopback by default), not TestClient's
    # "testserver".
    return TestClient(app, base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def client(checkpoint, index_dir):
    return _client(create_app(str(checkpoint), str(index_dir)))


def _upload(path):
    return {"image": (path.name, path.read_bytes(), "application/octet-stream")}


def test_page_and_info(client, checkpoint):
    page = client.get("/")
    assert page.status_code == 200
    assert 'id="zeroshot-form"' in page.text and 'id="search-form"' in page.text
    info = client.get("/api/info").json()
    assert info["model"] == checkpoint.name  # the directory's name: no server paths
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
        message = response.json()["error"]
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
    # Validation errors have the same shape (FastAPI's 422 list is replaced).
    assert "k: Input should be greater than or equal to 1" in detail(
        client.post("/api/search", json={"text": "x", "k": 0}), 400
    )
    assert detail(client.post("/api/zeroshot", data=labels), 400) == "image: Field required"


def test_without_an_index_search_is_404_and_zeroshot_works(checkpoint, photos):
    client = _client(create_app(str(checkpoint)))
    assert client.get("/api/info").json()["index_size"] == 0
    assert "--index" in client.post("/api/search", json={"text": "a cat"}).json()["error"]
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


# ---------------------------------------------------------------------------------------------
# Generative VLMs: a tiny fusion run trained here and a tiny random SmolVLM directory.

try:  # the SmolVLM directory fixture (its weights are written with transformers)
    from test_generate_cli import PROMPT as SMOLVLM_PROMPT
    from test_generate_cli import smolvlm_dir  # noqa: F401  (a fixture)
except pytest.skip.Exception:
    SMOLVLM_PROMPT = "What is in this image?"

    @pytest.fixture
    def smolvlm_dir():
        pytest.skip("transformers is not installed")


QUESTION = "what color is the circle?"


@pytest.fixture(scope="module")
def fusion_run(tmp_path_factory):
    from vlkit.recipes.vlm_run import VLMRecipe, train_vlm

    out = tmp_path_factory.mktemp("fusion_run")
    recipe = VLMRecipe(kind="llava", task="scene_questions", steps=2, connector_only_steps=0,
                       max_test=1, train_scenes=16, test_scenes=1, batch_size=8, hidden_size=32,
                       intermediate_size=64, layers=1, heads=2, num_queries=4, device="cpu")  # fmt: skip
    train_vlm(recipe, out)
    return out


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from vlkit.data.datasets.shapes import ShapesDataset

    path = tmp_path_factory.mktemp("scene") / "scene.png"
    ShapesDataset(1).scene(0)[0].save(path)
    return path


@pytest.fixture(scope="module")
def vlm_client(fusion_run):
    return _client(create_app(vlm_path=str(fusion_run)))


def _ask(client, paths, prompt, max_new_tokens=6, url="/api/generate"):
    files = [("image", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
    return client.post(url, files=files,
                       data={"prompt": prompt, "max_new_tokens": str(max_new_tokens)})  # fmt: skip


def _events(body: str) -> list[tuple[str, dict]]:
    events = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def _cli_text(capsys, model_dir, paths, prompt, max_new_tokens):
    from vlkit.cli import main

    images = [arg for p in paths for arg in ("--image", str(p))]
    code = main(["generate", "--model", str(model_dir), *images, "--prompt", prompt,
                 "--max-new-tokens", str(max_new_tokens)])  # fmt: skip
    assert code == 0
    return capsys.readouterr().out.rstrip("\n")


def test_generate_equals_the_run_and_the_cli(vlm_client, fusion_run, scene, capsys):
    from vlkit.data.images import load_image
    from vlkit.recipes.vlm_run import load_vlm_run

    run = load_vlm_run(fusion_run)
    expected = run.answer(load_image(scene), QUESTION, max_new_tokens=6)
    assert expected and expected == _cli_text(capsys, fusion_run, [scene], QUESTION, 6)
    answer = _ask(vlm_client, [scene], QUESTION)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["text"] == expected and body["unknown_words"] == []
    # tokens: what generate produced, the stop token not counted.
    ids, _ = run.prompt_ids(QUESTION)
    pixels = run.transform(load_image(scene))[None, None]
    new = run.model.generate(ids, pixel_values=pixels, max_new_tokens=6,
                             eos_token_id=run.tokenizer.eot_token_id)[0, ids.shape[1] :].tolist()  # fmt: skip
    assert body["tokens"] == len([t for t in new if t != run.tokenizer.eot_token_id])
    # Words outside the vocabulary are named (and become <unk> in the prompt).
    assert _ask(vlm_client, [scene], QUESTION + " zebra").json()["unknown_words"] == ["zebra"]
    assert _ask(vlm_client, [scene], QUESTION, max_new_tokens=1).json()["tokens"] <= 1


def test_generate_stream_sends_the_same_answer(vlm_client, scene):
    expected = _ask(vlm_client, [scene], QUESTION).json()
    stream = _ask(vlm_client, [scene], QUESTION, url="/api/generate/stream")
    assert stream.status_code == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = _events(stream.text)
    assert events[-1] == ("done", expected)
    pieces = [data["text"] for name, data in events[:-1]]
    assert {name for name, _ in events[:-1]} <= {"token"}
    assert "".join(pieces) == expected["text"]
    # Errors found before generation starts answer 400, like the JSON endpoint.
    assert _ask(vlm_client, [scene], " ", url="/api/generate/stream").status_code == 400


def test_concurrent_requests_get_the_same_answer(vlm_client, scene):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        texts = list(pool.map(lambda _: _ask(vlm_client, [scene], QUESTION).json()["text"],
                              range(3)))  # fmt: skip
    assert texts == [_ask(vlm_client, [scene], QUESTION).json()["text"]] * 3


def test_generate_errors_are_one_line(vlm_client, client, photos, scene, tmp_path):
    def detail(response, status):
        assert response.status_code == status, response.text
        message = response.json()["error"]
        assert isinstance(message, str) and "\n" not in message
        return message

    broken = tmp_path / "broken.jpg"
    broken.write_bytes((photos / "coffee.jpg").read_bytes()[:300])
    assert "broken.jpg" in detail(_ask(vlm_client, [broken], QUESTION), 400)
    assert "prompt is empty" in detail(_ask(vlm_client, [scene], "  "), 400)
    for bad in (0, 257):
        assert f"max_new_tokens={bad}: between 1 and 256" in detail(
            _ask(vlm_client, [scene], QUESTION, max_new_tokens=bad), 400
        )
    assert "not an integer" in detail(_ask(vlm_client, [scene], QUESTION, "many"), 400)
    assert "exactly one image" in detail(_ask(vlm_client, [scene, scene], QUESTION), 400)
    assert "no image" in detail(vlm_client.post("/api/generate", data={"prompt": "x"}), 400)
    # A server without --vlm: 404, and the page's info leaves the feature out.
    assert "--vlm" in detail(_ask(client, [scene], QUESTION), 404)
    assert "--vlm" in detail(_ask(client, [scene], QUESTION, url="/api/generate/stream"), 404)
    assert client.get("/api/info").json()["features"] == ["zeroshot", "search"]


def test_a_vlm_only_app_generates_and_answers_404_for_clip(vlm_client, fusion_run, photos):
    info = vlm_client.get("/api/info").json()
    assert info["features"] == ["generate"] and info["model"] is None
    assert info["vlm"]["kind"] == "fusion (llava)" and info["vlm"]["name"] == fusion_run.name
    assert info["vlm"]["max_images"] == 1 and info["vlm"]["task"] == "scene_questions"
    page = vlm_client.get("/")
    assert page.status_code == 200 and 'id="generate-form"' in page.text
    for response in (
        vlm_client.post(
            "/api/zeroshot", files=_upload(photos / "coffee.jpg"), data={"labels": "a cat"}
        ),  # fmt: skip
        vlm_client.post("/api/search", json={"text": "a cat"}),
        vlm_client.post("/api/search/image", files=_upload(photos / "coffee.jpg")),
        vlm_client.get("/api/images/0"),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error"] == (
            "this server has no CLIP model: start it with --model DIR"
        )


def test_an_app_with_everything_lists_every_feature(checkpoint, index_dir, fusion_run):
    client = _client(create_app(str(checkpoint), str(index_dir), vlm_path=str(fusion_run)))
    info = client.get("/api/info").json()
    assert info["features"] == ["zeroshot", "search", "generate"]
    assert info["index_size"] == len(PHOTOS) and info["vlm"]["kind"] == "fusion (llava)"


def test_create_app_and_serve_refuse_what_they_cannot_serve(
    checkpoint, index_dir, tmp_path, capsys, monkeypatch
):
    from vlkit.cli import main

    with pytest.raises(ValueError, match="nothing to serve"):
        create_app()
    with pytest.raises(ValueError, match="index needs the CLIP model"):
        create_app(index_dir=str(index_dir), vlm_path=str(tmp_path))
    with pytest.raises(ValueError, match="neither a `vlkit train-vlm` run"):
        create_app(vlm_path=str(checkpoint))  # a CLIP checkpoint is no VLM
    assert main(["serve"]) == 2
    assert "nothing to serve" in capsys.readouterr().err
    assert main(["serve", "--vlm", str(tmp_path / "missing")]) == 2
    assert "missing: no such VLM directory" in capsys.readouterr().err
    # --vlm reaches the server.
    calls = []
    monkeypatch.setattr("vlkit.serve.run_server", lambda *args, **kw: calls.append((args, kw)))
    assert main(["serve", "--vlm", "RUN", "--port", "8123"]) == 0
    assert len(calls) == 1 and calls[0][0] == (None, None, "127.0.0.1", 8123, "none")
    assert calls[0][1]["vlm_path"] == "RUN" and calls[0][1]["limits"].max_prompts == 2000


def test_smolvlm_generate_equals_the_cli(smolvlm_dir, photos, capsys):
    client = _client(create_app(vlm_path=str(smolvlm_dir)))
    info = client.get("/api/info").json()
    assert info["features"] == ["generate"] and info["vlm"]["kind"] == "smolvlm"
    one = [photos / "chelsea.png"]
    two = [photos / "chelsea.png", photos / "rocket.jpg"]
    for paths in (one, two):
        expected = _cli_text(capsys, smolvlm_dir, paths, SMOLVLM_PROMPT, 8)
        answer = _ask(client, paths, SMOLVLM_PROMPT, max_new_tokens=8)
        assert answer.status_code == 200, answer.text
        assert expected.strip() and answer.json()["text"] == expected
        assert 1 <= answer.json()["tokens"] <= 8
    events = _events(_ask(client, one, SMOLVLM_PROMPT, 8, url="/api/generate/stream").text)
    assert (
        events[-1][0] == "done"
        and events[-1][1]["text"] == _ask(client, one, SMOLVLM_PROMPT, 8).json()["text"]
    )
    too_many = _ask(client, one * 5, SMOLVLM_PROMPT)
    assert too_many.status_code == 400 and "1 to 4 images" in too_many.json()["error"]
