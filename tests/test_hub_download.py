"""Hub ids end to end: `vlkit.hub.download` against a fake Hugging Face hub on 127.0.0.1.

`FakeHub` serves the part of the hub's HTTP API that `huggingface_hub` (2.x) calls to download:
model info (`/api/models/{repo}/revision/{rev}`: commit sha + file list), the recursive tree
listing (`/api/models/{repo}/tree/{rev}`) and file resolution (`HEAD`/`GET`
`/{repo}/resolve/{rev}/{file}` with `X-Repo-Commit`, `ETag`, `Content-Length`, byte ranges, and
`X-Error-Code` on 4xx). The repositories hold tiny checkpoints built here; `HF_ENDPOINT` points
at the server and `HF_HOME` lives in the test's tmp_path (conftest's `HF_HUB_OFFLINE=1` is
lifted; `huggingface_hub` reads these at import, so its `constants` are patched too). Every
request is logged, so a test can assert which files were downloaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save

import vlkit
from vlkit.cli.main import main
from vlkit.errors import CheckpointError
from vlkit.hub.download import parse_hub_id, select_files
from vlkit.models.presets import PRESETS

huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import constants, file_download  # noqa: E402


class FakeHub:
    """Repositories (`repo id -> {file name: bytes}`) served over HTTP on 127.0.0.1.

    Attributes:
        log: (method, path, Range header) of every request, in order.
        cut: Files whose download is interrupted: a GET from the start sends half the bytes,
            then the connection drops; a resuming GET (with Range) drops before any answer.
        hidden: Files listed by the API that `resolve` answers 404 for (deleted meanwhile).
        tokens: Private repositories and the bearer token each needs.
    """

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.tokens: dict[str, str] = {}
        self.log: list[tuple[str, str, str | None]] = []
        self.cut: set[str] = set()
        self.hidden: set[str] = set()
        handler = type("Handler", (_HubHandler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def sha(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def downloaded(self, repo: str) -> list[str]:
        """The files of `repo` fetched with GET (in request order, repeats kept)."""
        prefix = f"/{repo}/resolve/"
        return [
            path[len(prefix) :].split("/", 1)[1]
            for method, path, _ in self.log
            if method == "GET" and path.startswith(prefix)
        ]


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's HTTP client expects
    hub: FakeHub

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.log.append((self.command, path, self.headers.get("Range")))
        if path.startswith("/api/models/"):
            org, name, *rest = path[len("/api/models/") :].split("/")
            repo = f"{org}/{name}"
            if self._refused(repo, rest[1] if len(rest) > 1 else "main"):
                return
            if not rest or rest[0] == "revision":
                files = self.hub.repos[repo]
                info = {"id": repo, "modelId": repo, "sha": self.hub.sha(repo), "private": False,
                        "siblings": [{"rfilename": f} for f in sorted(files)]}  # fmt: skip
                return self._json(info)
            if rest[0] == "tree":
                files = self.hub.repos[repo]
                tree = [{"type": "file", "path": f, "size": len(data),
                         "oid": hashlib.sha1(data).hexdigest()} for f, data in files.items()]  # fmt: skip
                return self._json(tree)
        parts = path.lstrip("/").split("/", 4)
        if len(parts) == 5 and parts[2] == "resolve":
            return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], parts[4], head)
        self._error(404, "RepoNotFound", "not found")

    def _refused(self, repo: str, revision: str) -> bool:
        """Answers the hub's errors for an unknown/private repository or revision."""
        needed = self.hub.tokens.get(repo)
        if repo not in self.hub.repos:
            self._error(404, "RepoNotFound", "Repository not found")
        elif needed and self.headers.get("Authorization") != f"Bearer {needed}":
            self._error(
                401, "RepoNotFound", "Invalid credentials"
            )  # as the hub: 401 + RepoNotFound
        elif revision not in ("main", self.hub.sha(repo)):
            self._error(404, "RevisionNotFound", "Invalid rev id")
        else:
            return False
        return True

    def _resolve(self, repo: str, revision: str, name: str, head: bool) -> None:
        if self._refused(repo, revision):
            return
        data = self.hub.repos[repo].get(name)
        if data is None or name in self.hub.hidden:
            return self._error(404, "EntryNotFound", "Entry not found", commit=self.hub.sha(repo))
        start = 0
        ranged = self.headers.get("Range")
        if ranged and not head:
            start = int(ranged.removeprefix("bytes=").split("-")[0])
            if name in self.hub.cut:  # the network is still down: no answer at all
                self.close_connection = True
                return
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", self.hub.sha(repo))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if head:
            return
        if name in self.hub.cut:  # half the bytes, then the connection drops
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _json(self, data) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def _pickle(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """The "tiny" preset, narrowed: CLIP's 49,408-token vocabulary (the tokenizer vlkit ships)
    in 1.6 MB of weights."""
    tiny = PRESETS["tiny"]
    config = replace(
        tiny, embed_dim=8,
        vision=replace(tiny.vision, width=16, heads=2, mlp_dim=32, layers=1),
        text=replace(tiny.text, width=8, heads=2, mlp_dim=16, layers=1),
    )  # fmt: skip
    directory = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    vlkit.create_model(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def fake_hub(clip_dir) -> FakeHub:
    hub = FakeHub()
    files = _files(clip_dir)
    state = load_file(clip_dir / "model.safetensors")
    configs = {k: v for k, v in files.items() if k.endswith(".json")}
    keys = sorted(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    shards = {f"model-0000{i + 1}-of-00002.safetensors": save({k: state[k] for k in half})
              for i, half in enumerate(halves)}  # fmt: skip
    weight_map = {k: name for name, half in zip(shards, halves, strict=True) for k in half}
    index = {"metadata": {}, "weight_map": weight_map}
    hub.repos = {
        # The layout of openai/clip-vit-base-patch32: the same weights in several formats.
        "acme/tiny-clip": {
            **files,
            "pytorch_model.bin": _pickle(state),
            "flax_model.msgpack": b"\0" * 64,
            "tf_model.h5": b"\0" * 64,
            "onnx/model.onnx": b"\0" * 64,
            "onnx/config.json": b"{}",
            "README.md": b"# tiny",
        },  # fmt: skip
        "acme/bin-clip": {**configs, "pytorch_model.bin": _pickle(state)},
        "acme/sharded-clip": {
            **configs,
            **shards,
            "pytorch_model.bin": _pickle(state),
            "model.safetensors.index.json": json.dumps(index).encode(),
        },  # fmt: skip
        "acme/lost-shard": {
            **configs,
            next(iter(shards)): next(iter(shards.values())),
            "model.safetensors.index.json": json.dumps(index).encode(),
        },  # fmt: skip
        "acme/no-weights": {**configs, "README.md": b"# nothing to load"},
        "acme/private-clip": dict(files),
    }
    hub.tokens["acme/private-clip"] = "s3cret"
    yield hub
    hub.server.shutdown()


@pytest.fixture
def hub(fake_hub, tmp_path, monkeypatch) -> FakeHub:
    """`fake_hub` as HF_ENDPOINT, an empty HF_HOME under tmp_path, online."""
    home = tmp_path / "hf_home"
    settings = {
        "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_ENDPOINT": fake_hub.url,
        "HF_HUB_OFFLINE": "0", "HF_TOKEN_PATH": str(home / "token"),
    }  # fmt: skip
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    _point_at(monkeypatch, fake_hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    fake_hub.log.clear()
    fake_hub.cut.clear()
    fake_hub.hidden.clear()
    return fake_hub


def _point_at(monkeypatch, endpoint: str) -> None:
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)


def _same_weights(model, reference) -> None:
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)


def _one_line_error(call, *needles: str) -> str:
    with pytest.raises(CheckpointError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


# --- which files: a pure function of the listing -----------------------------------------------


def test_parse_hub_id() -> None:
    assert parse_hub_id("openai/clip-vit-base-patch32").repo_id == "openai/clip-vit-base-patch32"
    assert parse_hub_id("hf-hub:timm/ViT-B-16-SigLIP").repo_id == "timm/ViT-B-16-SigLIP"
    assert parse_hub_id("acme/model@v1.0").revision == "v1.0"
    for path in ["runs/vlm/x", "/abs/dir", "./here", "~/model", "model", "a/", "/b"]:
        assert parse_hub_id(path) is None, path


@pytest.mark.parametrize(
    "listing, weights",
    [
        # openai/clip-vit-base-patch32: every format; the safetensors win.
        (["config.json", "flax_model.msgpack", "merges.txt", "model.safetensors",
          "preprocessor_config.json", "pytorch_model.bin", "special_tokens_map.json",
          "tf_model.h5", "tokenizer.json", "tokenizer_config.json", "vocab.json"],
         "model.safetensors"),
        # An older repository with pickled weights only.
        (["config.json", "pytorch_model.bin", "vocab.json", "merges.txt"], "pytorch_model.bin"),
        # laion's open_clip repositories also carry the transformers copy: open_clip wins.
        (["open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin",
          "config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json"],
         "open_clip_model.safetensors"),
        (["open_clip_config.json", "open_clip_pytorch_model.bin"], "open_clip_pytorch_model.bin"),
        (["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
          "pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin"],
         "model.safetensors.index.json"),
        (["config.json", "pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin"],
         "pytorch_model.bin.index.json"),
        (["vlkit_config.json", "model.safetensors"], "model.safetensors"),
    ],
)  # fmt: skip
def test_one_set_of_weights_is_selected(listing, weights) -> None:
    metadata, chosen = select_files(listing)
    assert chosen == weights
    assert not [f for f in metadata if f.endswith((".bin", ".safetensors", ".index.json"))]


def test_configs_tokenizers_processors_and_templates_are_selected() -> None:
    # HuggingFaceTB/SmolVLM-256M-Instruct as transformers 5 saves it, plus its onnx/ folder.
    listing = ["added_tokens.json", "chat_template.jinja", "chat_template.json", "config.json",
               "generation_config.json", "merges.txt", "model.safetensors", "onnx/model.onnx",
               "onnx/config.json", "preprocessor_config.json", "processor_config.json",
               "README.md", "special_tokens_map.json", "spiece.model", "tokenizer.json",
               "tokenizer_config.json", "vocab.json", ".gitattributes"]  # fmt: skip
    metadata, weights = select_files(listing)
    assert weights == "model.safetensors"
    assert set(metadata) == {
        "added_tokens.json", "chat_template.jinja", "chat_template.json", "config.json",
        "generation_config.json", "merges.txt", "preprocessor_config.json",
        "processor_config.json", "special_tokens_map.json", "spiece.model", "tokenizer.json",
        "tokenizer_config.json", "vocab.json",
    }  # fmt: skip
    with pytest.raises(CheckpointError, match="no weights vlkit reads.*model.safetensors"):
        select_files(["config.json", "tf_model.h5", "flax_model.msgpack"], "acme/tf-only")


# --- end to end against the fake hub -----------------------------------------------------------


def test_safetensors_repo_downloads_only_what_vlkit_reads(hub, clip_dir) -> None:
    model = vlkit.from_pretrained("acme/tiny-clip")
    _same_weights(model, vlkit.from_pretrained(clip_dir))
    fetched = hub.downloaded("acme/tiny-clip")
    assert sorted(fetched) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    # load_clip (tokenizer, transform) and a second load reuse the cache: nothing downloaded.
    hub.log.clear()
    loaded, tokenizer, transform = vlkit.load_clip("acme/tiny-clip")
    _same_weights(loaded, model)
    assert tokenizer(["a photo"]).shape[0] == 1 and transform is not None
    assert vlkit.get_tokenizer("acme/tiny-clip")(["a photo"]).shape[1] == 32
    assert tuple(vlkit.get_transform("acme/tiny-clip")(Image.new("RGB", (9, 7))).shape) == (
        3,
        32,
        32,
    )
    assert hub.downloaded("acme/tiny-clip") == []


def test_bin_only_and_sharded_repos_load(hub, clip_dir) -> None:
    reference = vlkit.from_pretrained(clip_dir)
    _same_weights(vlkit.from_pretrained("acme/bin-clip"), reference)
    assert "pytorch_model.bin" in hub.downloaded("acme/bin-clip")
    _same_weights(vlkit.from_pretrained("acme/sharded-clip"), reference)
    fetched = hub.downloaded("acme/sharded-clip")
    assert "pytorch_model.bin" not in fetched  # never both formats
    assert {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
            "model.safetensors.index.json"} <= set(fetched)  # fmt: skip


def test_revision_and_token(hub, clip_dir, monkeypatch) -> None:
    sha = hub.sha("acme/tiny-clip")
    vlkit.from_pretrained(f"acme/tiny-clip@{sha}")
    vlkit.from_pretrained("acme/tiny-clip", revision="main")
    _one_line_error(lambda: vlkit.from_pretrained("acme/tiny-clip@nope"), "no such revision")
    _one_line_error(lambda: vlkit.from_pretrained("acme/private-clip"), "HF_TOKEN")
    _same_weights(vlkit.from_pretrained("acme/private-clip", token="s3cret"),
                  vlkit.from_pretrained(clip_dir))  # fmt: skip


def test_errors_are_one_line(hub) -> None:
    _one_line_error(
        lambda: vlkit.from_pretrained("acme/missing"), "'acme/missing'", "no such model repository"
    )
    _one_line_error(
        lambda: vlkit.from_pretrained("acme/no-weights"), "no weights vlkit reads", "README.md"
    )
    _one_line_error(
        lambda: vlkit.from_pretrained("acme/lost-shard"),
        "model-00002-of-00002.safetensors",
        "does not have",
    )
    hub.hidden.add("model.safetensors")  # listed, but gone when it is fetched
    _one_line_error(
        lambda: vlkit.from_pretrained("acme/tiny-clip"), "model.safetensors", "does not have"
    )


class _NoSleep:
    """`time` without the 1 s pauses between huggingface_hub's download retries."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        pass


def test_interrupted_download_is_one_line_and_a_retry_resumes(hub, clip_dir, monkeypatch):
    monkeypatch.setattr(file_download, "time", _NoSleep())
    hub.cut.add("model.safetensors")
    _one_line_error(lambda: vlkit.from_pretrained("acme/tiny-clip"), "interrupted", "again")
    hub.cut.clear()
    hub.log.clear()
    _same_weights(vlkit.from_pretrained("acme/tiny-clip"), vlkit.from_pretrained(clip_dir))
    # The files that did arrive stay in the cache: the retry fetches only the interrupted one.
    assert hub.downloaded("acme/tiny-clip") == ["model.safetensors"], hub.log


def test_offline_uses_a_warm_cache_and_names_a_cold_one(hub, clip_dir, monkeypatch) -> None:
    vlkit.from_pretrained("acme/tiny-clip")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.log.clear()
    _same_weights(vlkit.from_pretrained("acme/tiny-clip"), vlkit.from_pretrained(clip_dir))
    assert hub.log == []  # not one request
    _one_line_error(
        lambda: vlkit.from_pretrained("acme/bin-clip"),
        "HF_HUB_OFFLINE",
        "not in the Hugging Face cache",
    )
    # The hub unreachable (nothing listens on the port): the same two outcomes.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    _point_at(monkeypatch, "http://127.0.0.1:9")
    vlkit.from_pretrained("acme/tiny-clip")
    _one_line_error(lambda: vlkit.from_pretrained("acme/bin-clip"), "cannot be reached")


def test_cli_zeroshot_with_a_hub_id(hub, tmp_path, capsys, monkeypatch) -> None:
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    assert main(["zeroshot", str(image), "--model", "acme/tiny-clip", "--labels", "red,blue"]) == 0
    assert "red" in capsys.readouterr().out
    monkeypatch.setenv("HF_TOKEN", "s3cret")  # the CLI honours HF_TOKEN
    assert main(["zeroshot", str(image), "--model", "acme/private-clip", "--labels", "a,b"]) == 0
    capsys.readouterr()
    for model in ["acme/missing", "acme/no-weights"]:
        assert main(["zeroshot", str(image), "--model", model, "--labels", "a,b"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("vlkit: error: ") and model in err, err


# --- open_clip and SmolVLM repositories (built with the reference libraries) -------------------

OPEN_CLIP_CFG = {
    "embed_dim": 24,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 48, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 500, "width": 32, "heads": 4, "layers": 1},
}


@pytest.fixture(scope="module")
def open_clip_repo(fake_hub, tmp_path_factory) -> Path:
    """`acme/open-clip` as timm's / laion's open_clip repositories lay it out, with pickled
    weights only, next to a transformers copy (which must not be fetched)."""
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=OPEN_CLIP_CFG["embed_dim"], vision_cfg=OPEN_CLIP_CFG["vision_cfg"],
        text_cfg=OPEN_CLIP_CFG["text_cfg"], quick_gelu=True,
    )  # fmt: skip
    config = {"model_cfg": OPEN_CLIP_CFG,
              "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}  # fmt: skip
    directory = tmp_path_factory.mktemp("open_clip")
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    (directory / "open_clip_pytorch_model.bin").write_bytes(_pickle(model.state_dict()))
    fake_hub.repos["acme/open-clip"] = {
        **_files(directory), "model.safetensors": b"\0" * 64, "pytorch_model.bin": b"\0" * 64,
    }  # fmt: skip
    return directory


def test_open_clip_hub_id(hub, open_clip_repo) -> None:
    model = vlkit.from_pretrained("hf-hub:acme/open-clip")
    _same_weights(model, vlkit.from_pretrained(open_clip_repo))
    assert sorted(hub.downloaded("acme/open-clip")) == [
        "open_clip_config.json", "open_clip_pytorch_model.bin",
    ]  # fmt: skip
    pixels = vlkit.get_transform("hf-hub:acme/open-clip")(Image.new("RGB", (50, 40)))
    assert tuple(pixels.shape) == (3, 32, 32)


@pytest.fixture(scope="module")
def smolvlm_repo(fake_hub, tmp_path_factory) -> Path:
    """`acme/smolvlm`: a tiny SmolVLM2 as transformers 5 saves it (`chat_template.jinja`)."""
    pytest.importorskip("transformers")
    from test_smolvlm_processor import CHAT_TEMPLATE, _write_processor, write_random_smolvlm

    directory = _write_processor(tmp_path_factory.mktemp("smolvlm"))
    (directory / "chat_template.json").unlink()
    (directory / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    write_random_smolvlm(directory, vision_layers=1, text_layers=1)
    fake_hub.repos["acme/smolvlm"] = {**_files(directory), "onnx/model.onnx": b"\0" * 64}
    return directory


def test_cli_generate_with_a_hub_id(hub, smolvlm_repo, tmp_path, capsys) -> None:
    image = tmp_path / "photo.png"
    Image.new("RGB", (48, 40), (20, 120, 200)).save(image)
    args = ["generate", "--image", str(image), "--prompt", "What is in this image?",
            "--max-new-tokens", "4"]  # fmt: skip
    assert main([*args, "--model", str(smolvlm_repo)]) == 0
    local = capsys.readouterr().out
    assert main([*args, "--model", "acme/smolvlm"]) == 0
    assert capsys.readouterr().out == local
    fetched = set(hub.downloaded("acme/smolvlm"))
    assert {"chat_template.jinja", "model.safetensors", "generation_config.json"} <= fetched
    assert "onnx/model.onnx" not in fetched
    assert main([*args, "--model", "acme/missing"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "acme/missing" in err and "no such model repository" in err
