"""`vlkit serve --vlm EXPORT --onnx-variant int8`: the web app runs the export's INT8 files (not
its fp32 ones), answers as `OnnxVLMPipeline.load(EXPORT, variant="int8")` does, reports the
variant in /api/info, and a bad variant, a variant the export lacks or the flag for a model that
is no export is one line and exit status 2 before the server starts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from PIL import Image

from vlkit.cli import main
from vlkit.inference.onnx_vlm_pipeline import OnnxVLMPipeline

pytest.importorskip("transformers")
pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
skimage_data = pytest.importorskip("skimage.data")
from fastapi.testclient import TestClient  # noqa: E402
from test_smolvlm_processor import _write_processor, write_random_smolvlm  # noqa: E402

PROMPT = "What is in this image?"
NEW = 6


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SmolVLM2 (32-px tiles, 2-layer decoder): the torch checkpoint."""
    directory = _write_processor(tmp_path_factory.mktemp("smolvlm"), padding_side="left")
    write_random_smolvlm(directory)
    return directory


@pytest.fixture(scope="module")
def exported(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Its export with fp32 and INT8 files (no q4 files), as `vlkit export --quantize int8`."""
    from vlkit.inference.smolvlm_onnx_export import export_smolvlm_onnx

    out = tmp_path_factory.mktemp("export") / "onnx_export"
    export_smolvlm_onnx(source, out, quantize="int8")
    return out


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "cat.png"  # lossless: the server sees these pixels
    Image.fromarray(skimage_data.chelsea()).save(path)
    return path


def _decoder_file(pipeline: OnnxVLMPipeline) -> str:
    """The file the pipeline's decoder session was opened from."""
    return Path(pipeline.onnx.sessions["decoder_model_merged"]._model_path).name


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_runs_the_int8_files_and_answers_as_the_pipeline(exported, photo, monkeypatch):
    """`vlkit serve` end to end (argparse -> run_server -> create_app), with uvicorn's loop
    replaced by an in-process client of the app it was given."""
    import uvicorn

    from vlkit.serve import app as serve_app

    apps, loaded = [], []

    def run(server: uvicorn.Server, sockets: list[socket.socket]) -> None:
        for sock in sockets:  # bound on 127.0.0.1 before the models loaded; nothing listens
            sock.close()
        apps.append(server.config.app)

    def load_served_vlm(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        loaded.append(real_load(*args, **kwargs))
        return loaded[-1]

    real_load = serve_app.load_served_vlm
    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setattr(serve_app, "load_served_vlm", load_served_vlm)
    argv = ["serve", "--vlm", str(exported), "--onnx-variant", "int8", "--port", str(_free_port())]
    assert main(argv) == 0
    assert len(apps) == 1 and len(loaded) == 1
    # The served sessions are the INT8 files, not the fp32 ones a plain --vlm runs.
    assert _decoder_file(loaded[0].pipeline) == "decoder_model_merged_int8.onnx"
    fp32 = OnnxVLMPipeline.load(exported)
    assert _decoder_file(fp32) == "decoder_model_merged.onnx"

    client = TestClient(apps[0], base_url="http://127.0.0.1")
    info = client.get("/api/info").json()["vlm"]
    assert info["kind"] == "smolvlm-onnx" and info["onnx_variant"] == "int8"
    files = [("image", (photo.name, photo.read_bytes(), "application/octet-stream"))]
    answer = client.post(
        "/api/generate", files=files, data={"prompt": PROMPT, "max_new_tokens": str(NEW)}
    )
    assert answer.status_code == 200, answer.text

    direct = OnnxVLMPipeline.load(exported, variant="int8")
    assert _decoder_file(direct) == "decoder_model_merged_int8.onnx"
    image = Image.open(photo).convert("RGB")
    new = direct.generate(direct.prepare([image], PROMPT), NEW)
    assert answer.json()["text"] == direct.decode(new)
    assert 1 <= answer.json()["tokens"] <= NEW


def test_library_reports_the_variant_and_refuses_one_without_an_export(exported, source):
    from vlkit.serve import create_app
    from vlkit.serve.generative import load_served_vlm

    assert load_served_vlm(str(exported)).info()["onnx_variant"] == "fp32"  # the default
    with pytest.raises(ValueError, match="onnx_variant='int8' needs vlm_path"):
        create_app(model_path="unused", onnx_variant="int8")
    with pytest.raises(ValueError, match="is not an ONNX export"):
        load_served_vlm(str(source), onnx_variant="int8")
    with pytest.raises(FileNotFoundError, match="decoder_model_merged_q4.onnx: no such file"):
        load_served_vlm(str(exported), onnx_variant="q4")


def test_bad_variants_are_one_line_before_the_server_starts(
    exported, source, tmp_path, capsys, monkeypatch
):
    started = []
    monkeypatch.setattr("vlkit.serve.run_server", lambda *a, **kw: started.append(a))

    def error(*argv: str) -> str:
        assert main(["serve", *argv]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(lines) == 1, lines
        return lines[0]

    unknown = error("--vlm", str(exported), "--onnx-variant", "int4")  # argparse's choices
    assert "argument --onnx-variant: invalid choice: 'int4'" in unknown
    assert "'fp32', 'int8', 'q4'" in unknown
    lacking = error("--vlm", str(exported), "--onnx-variant", "q4")
    assert lacking.startswith("vlkit: error: --onnx-variant q4: ")
    assert "this export has the variants: fp32, int8" in lacking
    not_export = error("--vlm", str(source), "--onnx-variant", "int8")
    assert "--onnx-variant needs --vlm to be a VLM ONNX export" in not_export
    assert f"{source} is not one" in not_export
    missing = error("--vlm", str(tmp_path / "missing"), "--onnx-variant", "fp32")
    assert "--onnx-variant needs --vlm to be" in missing
    no_vlm = error("--model", str(source), "--onnx-variant", "int8")
    assert "--onnx-variant needs --vlm" in no_vlm
    assert started == []  # nothing reached the server
    # Without the flag, an export is still served (its fp32 files) as before.
    assert main(["serve", "--vlm", str(exported)]) == 0 and len(started) == 1
