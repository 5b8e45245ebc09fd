"""Batched answers from ONNX exports (`vlkit.inference.batch_generation` over `OnnxVLMPipeline`
and `OnnxLlavaPipeline`): one `OnnxVLM.generate` call per batch, answers equal to each request
answered alone (prompts of different lengths, one or two images, a row that stops early), and
`vlkit benchmark`'s recipe on an export predicts what it predicts on the torch checkpoint.

One tiny random SmolVLM2 and one tiny random LLaVA are exported (fp32 only) per module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlkit.data.benchmarks.vqa_sets import GenerativeSample, GenerativeSet
from vlkit.inference.batch_generation import batchable, generate_batch
from vlkit.inference.onnx_vlm import OnnxVLM
from vlkit.inference.onnx_vlm_pipeline import OnnxLlavaPipeline, OnnxVLMPipeline
from vlkit.inference.vlm_loading import load_vlm
from vlkit.recipes.generative_benchmark import run_generative_task

transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
from test_llava_onnx import write_random_llava  # noqa: E402
from test_smolvlm_processor import _write_processor, write_random_smolvlm  # noqa: E402

NEW = 8
KINDS = ["smolvlm", "llava"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The torch checkpoints: SmolVLM2 with 32-px tiles (images split up to 3 x 3), LLaVA."""
    smolvlm = _write_processor(tmp_path_factory.mktemp("smolvlm"))
    write_random_smolvlm(smolvlm, vision_layers=1, max_position_embeddings=1024)
    return {"smolvlm": smolvlm, "llava": write_random_llava(tmp_path_factory.mktemp("llava"))}


@pytest.fixture(scope="module")
def exports(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vlkit.inference.llava_onnx_export import export_llava_onnx
    from vlkit.inference.smolvlm_onnx_export import export_smolvlm_onnx

    out = tmp_path_factory.mktemp("exports")
    export_smolvlm_onnx(sources["smolvlm"], out / "smolvlm")
    export_llava_onnx(sources["llava"], out / "llava")
    return {"smolvlm": out / "smolvlm", "llava": out / "llava"}


@pytest.fixture(scope="module")
def pipelines(exports: dict[str, Path]) -> dict:
    return {kind: load_vlm(directory) for kind, directory in exports.items()}


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _requests() -> list[tuple[list[Image.Image], str]]:
    """Prompts of different lengths with one or two images of different sizes (so different
    SmolVLM tile counts: the short rows get padding images)."""
    return [
        ([_image(1, (40, 56))], "What?"),
        ([_image(2, (90, 33)), _image(4, (30, 30))], "Compare the two pictures, in a few words."),
        ([_image(3, (64, 64))], "What is in this image? Answer the question using a word."),
    ]


class _GenerateSpy:
    """Counts `OnnxVLM.generate` calls and their batch sizes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batch_sizes: list[int] = []
        original = OnnxVLM.generate

        def spy(model: OnnxVLM, input_ids, *args, **kwargs):
            self.batch_sizes.append(len(input_ids))
            return original(model, input_ids, *args, **kwargs)

        monkeypatch.setattr(OnnxVLM, "generate", spy)


def test_exports_are_batchable(pipelines: dict) -> None:
    assert type(pipelines["smolvlm"]) is OnnxVLMPipeline
    assert type(pipelines["llava"]) is OnnxLlavaPipeline
    assert all(batchable(pipeline) for pipeline in pipelines.values())


@pytest.mark.parametrize("kind", KINDS)
def test_one_onnx_call_per_batch_answers_as_alone(
    pipelines: dict, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the export's own stop tokens, then with a stop token that one row emits early (a
    plain token, so its text shows in that row's answer and nowhere else)."""
    pipeline = pipelines[kind]
    requests = _requests()
    prepared = [pipeline.prepare(images, prompt) for images, prompt in requests]
    assert len({inputs.input_ids.shape[1] for inputs in prepared}) == 3  # really left-padded

    def alone() -> tuple[list[list[int]], list[str]]:
        ids = [pipeline.generate(inputs, NEW) for inputs in prepared]
        return ids, [pipeline.decode(row) for row in ids]

    spy = _GenerateSpy(monkeypatch)
    _, expected = alone()
    assert generate_batch(pipeline, requests, NEW) == expected
    assert spy.batch_sizes == [1, 1, 1, 3]  # alone three times, then one batched call

    stops: list[int] = []
    monkeypatch.setattr(type(pipeline), "eos_token_id", property(lambda self: stops))
    free, _ = alone()  # no stop token: every row runs NEW steps
    assert all(len(row) == NEW for row in free)
    # A token that one row emits at step >= 1 (not before) and no other row emits at all.
    row, step, stop = next(
        (r, i, token)
        for r, ids in enumerate(free)
        for i, token in enumerate(ids)
        if i >= 1 and token not in ids[:i] and all(token not in o for o in free[:r] + free[r + 1 :])
    )
    stops.append(stop)
    ids, expected = alone()
    assert ids[row] == free[row][: step + 1] and step + 1 < NEW  # that row stops early
    assert all(ids[r] == free[r] for r in range(3) if r != row)  # the others run on
    spy.batch_sizes.clear()
    assert generate_batch(pipeline, requests, NEW) == expected
    assert spy.batch_sizes == [3]
    assert expected[row] != pipeline.decode(free[row])  # the stop changed that answer


@pytest.mark.parametrize("kind", KINDS)
def test_benchmark_run_on_export_predicts_as_torch_checkpoint(
    sources: dict[str, Path],
    exports: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """`run_generative_task` (what `vlkit benchmark --tasks vqav2` runs) loading the export
    directory: batches of 3 and 1, one onnxruntime generation each, the torch predictions."""
    samples = []
    for n, question in enumerate(["What is it?", "What color is the cat on the left?",
                                  "How many?", "Is it an astronaut?"]):  # fmt: skip
        path = tmp_path / "images" / f"{n}.jpg"
        path.parent.mkdir(exist_ok=True)
        _image(10 + n, (40 + 30 * n, 56)).save(path, format="JPEG")
        samples.append(GenerativeSample(1000 + n, path, question, ("cat",) * 10))
    dataset = GenerativeSet("vqav2", tmp_path / "images", samples, len(samples))

    def predictions(model_dir: Path, out: str) -> list[dict]:
        record = run_generative_task(model_dir, "vqav2", dataset, tmp_path / out, batch_size=3,
                                     max_new_tokens=NEW, progress=False)  # fmt: skip
        return json.loads(Path(record["submission"]).read_text())

    torch_rows = predictions(sources[kind], "torch")
    spy = _GenerateSpy(monkeypatch)
    onnx_rows = predictions(exports[kind], "onnx")
    assert spy.batch_sizes == [3, 1]
    assert onnx_rows == torch_rows
    assert [row["question_id"] for row in onnx_rows] == [1000, 1001, 1002, 1003]
    assert any(row["answer"] for row in onnx_rows)  # not all empty
