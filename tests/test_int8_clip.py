"""INT8 CLIP inference: onnxruntime INT8 towers and torch `quantize_int8` stay close to fp32."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from test_export import _config
from torch import nn

from vlkit.inference import OnnxCLIP, export_onnx, quantize_int8
from vlkit.inference.onnx_export import DEFAULT_INT8_MIN_COSINE
from vlkit.models.clip import CLIP, create_model

NUM_CLASSES = 6
# Both towers learn the task with margins >= 0.35 (measured training on 1 and on 2 threads; the
# fixture uses 1); a higher learning rate makes the tiny BatchNorm ResNet erratic.
STEPS = 100
LR = 2e-3


def _synthetic_task() -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """Six classes: an image is its class's fixed random pattern plus noise; a class's prompt is
    a fixed random token sequence."""
    generator = torch.Generator().manual_seed(0)
    patterns = torch.randn(NUM_CLASSES, 3, 32, 32, generator=generator)
    prompts = torch.randint(1, 999, (NUM_CLASSES, 16), generator=generator)
    return patterns, prompts, generator


def _images(
    patterns: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    return patterns[labels] + 0.5 * torch.randn(len(labels), 3, 32, 32, generator=generator)


def _trained(kind: str) -> CLIP:
    """A tiny model trained for 100 steps (1-3 s) on the synthetic task, so that zero-shot
    classes are separated by wide margins (a random tiny model's are near-tied) and the weights
    have trained, not initial, ranges."""
    torch.manual_seed(0)
    model = create_model(_config(kind))
    patterns, prompts, generator = _synthetic_task()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    labels = torch.arange(NUM_CLASSES).repeat(4)
    with torch.enable_grad():  # the fixture may be first called inside a no_grad test
        for _ in range(STEPS):
            image = model.encode_image(_images(patterns, labels, generator), normalize=True)
            logits = 10 * image @ model.encode_text(prompts, normalize=True).T
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(20.0))
    return model.eval()


@pytest.fixture(scope="module")
def exported_int8(tmp_path_factory: pytest.TempPathFactory):
    """(trained model, export dir, report) per kind, exported once with int8=True and shared."""
    cache = {}

    def get(kind: str):  # noqa: ANN202
        if kind not in cache:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # tiny ops: threads only add waits on a busy machine
            try:
                model = _trained(kind)
                out = tmp_path_factory.mktemp(f"onnx_int8_{kind}")
                cache[kind] = (model, out, export_onnx(model, out, int8=True))
            finally:
                torch.set_num_threads(threads)
        return cache[kind]

    return get


def _inputs(model: CLIP, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    size, text = model.config.vision.image_size, model.config.text
    pixels = torch.randn(batch, 3, size, size, generator=generator)
    ids = torch.randint(0, text.vocab_size, (batch, text.context_length), generator=generator)
    return pixels, ids


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    return (a * (b / np.linalg.norm(b, axis=-1, keepdims=True))).sum(axis=-1)


@pytest.mark.parametrize("kind", ["vit", "resnet"])
@torch.no_grad()
def test_onnx_int8_embeddings_close_to_torch_fp32(exported_int8, kind: str) -> None:
    model, out, report = exported_int8(kind)
    for name in ("image_encoder.int8.onnx", "text_encoder.int8.onnx"):
        assert report.file_sizes[name] == (out / name).stat().st_size > 0
    config = json.loads((out / "onnx_config.json").read_text())
    assert config["int8"]["image_file"] == "image_encoder.int8.onnx"
    assert config["int8"]["min_cosine"] == report.int8_min_cosine
    assert min(report.int8_min_cosine.values()) >= DEFAULT_INT8_MIN_COSINE
    int8 = OnnxCLIP.load(out, int8=True, num_threads=1)
    pixels, ids = _inputs(model, 8)  # not the verification batches
    image = _cosine(int8.encode_image(pixels), model.encode_image(pixels).numpy())
    text = _cosine(int8.encode_text(ids), model.encode_text(ids).numpy())
    # Measured minima are 0.999 or higher on these tiny towers; 0.99 is the export's own bound.
    assert image.min() >= DEFAULT_INT8_MIN_COSINE and text.min() >= DEFAULT_INT8_MIN_COSINE
    # Quantized, not a copy of the float32 files.
    assert image.min() < 1 - 1e-7 or text.min() < 1 - 1e-7


@pytest.mark.parametrize("kind", ["vit", "resnet"])
@torch.no_grad()
def test_onnx_int8_zero_shot_predictions_match_fp32(exported_int8, kind: str) -> None:
    """Every INT8 top-1 equals fp32's, and provably so: for unit vectors
    |a.b - a'.b'| <= |a - a'| + |b - b'|, so an image whose fp32 top-1 cosine beats the
    runner-up by more than 2 (max image error + max class error) cannot change class. The
    trained model's margins (>= 0.35 measured) are ten times that bound (<= 0.04), so the
    assertion does not hang on near-ties, on the CPU's int8 kernel or on the seed."""
    model, out, _ = exported_int8(kind)
    int8 = OnnxCLIP.load(out, int8=True, num_threads=1)
    patterns, prompts, _ = _synthetic_task()
    labels = torch.arange(NUM_CLASSES).repeat(6)
    pixels = _images(patterns, labels, torch.Generator().manual_seed(2))  # unseen noise
    fp32_image = model.encode_image(pixels, normalize=True).numpy()
    fp32_text = model.encode_text(prompts, normalize=True).numpy()
    int8_image, int8_text = int8.encode_image(pixels), int8.encode_text(prompts)
    scores = fp32_image @ fp32_text.T  # (36, 6) cosines
    assert (scores.argmax(axis=1) == labels.numpy()).all()  # the task was learnt
    image_error = np.linalg.norm(int8_image - fp32_image, axis=-1).max()
    text_error = np.linalg.norm(int8_text - fp32_text, axis=-1).max()
    top2 = np.sort(scores, axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 2 * (image_error + text_error)
    np.testing.assert_array_equal((int8_image @ int8_text.T).argmax(axis=1), labels.numpy())


def _float_weights(model: onnx.ModelProto) -> list[str]:
    """Float matrices that a MatMul, Gemm or Gather reads directly (not quantized)."""
    initializers = {t.name: t for t in model.graph.initializer}
    return [
        name
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm", "Gather")
        for name in node.input
        if name in initializers
        and initializers[name].data_type == onnx.TensorProto.FLOAT
        and len(initializers[name].dims) == 2
    ]


def test_onnx_int8_quantizes_every_linear_and_embedding_weight(exported_int8) -> None:
    _, out, report = exported_int8("vit")
    for tower in ("image_encoder", "text_encoder"):
        fp32 = onnx.load(out / f"{tower}.onnx")
        int8 = onnx.load(out / f"{tower}.int8.onnx")
        assert len(_float_weights(fp32)) >= 9  # 2 blocks x 4 linears + projection (+ embedding)
        assert _float_weights(int8) == []  # Gemm rewritten as MatMul, then all quantized
        int8_bytes = sum(numpy_helper.to_array(t).nbytes for t in int8.graph.initializer
                         if t.data_type == onnx.TensorProto.INT8)  # fmt: skip
        assert int8_bytes > 0
        # The tiny towers are not weight-dominated (graph, norms, position embeddings stay
        # float): measured 2.0x (image) and 2.4x (text); a CLIP ViT-B/32 shrinks about 3.9x.
        sizes = report.file_sizes
        assert sizes[f"{tower}.onnx"] > 1.8 * sizes[f"{tower}.int8.onnx"]


def _linear_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if type(m) is nn.Linear]


@pytest.mark.parametrize("kind", ["vit", "resnet", "siglip"])
@torch.no_grad()
def test_torch_quantize_int8_clip_towers_close_to_fp32(kind: str) -> None:
    torch.manual_seed(0)
    model = create_model(_config(kind)).eval()
    quantized = quantize_int8(model)
    # Every linear layer is converted except SigLIP's attention-pooling in_proj, whose fused
    # weight the head splits itself (see vlkit.inference.quantize).
    left = ["vision.attention_pool.in_proj"] if kind == "siglip" else []
    assert _linear_names(quantized) == left
    pixels, ids = _inputs(model, 4)
    image = F.cosine_similarity(quantized.encode_image(pixels), model.encode_image(pixels))
    text = F.cosine_similarity(quantized.encode_text(ids), model.encode_text(ids))
    assert image.min() > 0.99 and text.min() > 0.99  # measured >= 0.998


def test_int8_load_errors(exported_int8, tmp_path: Path) -> None:
    _, out, _ = exported_int8("vit")
    for name in ("onnx_config.json", "image_encoder.onnx", "text_encoder.onnx"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    with pytest.raises(FileNotFoundError, match=r"image_encoder\.int8\.onnx: .*--int8"):
        OnnxCLIP.load(tmp_path, int8=True)
    # INT8 files beside a config that does not list them belong to another export.
    for name in ("image_encoder.int8.onnx", "text_encoder.int8.onnx"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    config = json.loads((out / "onnx_config.json").read_text())
    (tmp_path / "onnx_config.json").write_text(json.dumps({**config, "int8": None}))
    with pytest.raises(FileNotFoundError, match="no INT8 towers"):
        OnnxCLIP.load(tmp_path, int8=True)
    OnnxCLIP.load(tmp_path)  # the float32 towers still load


def test_failed_int8_check_writes_nothing(tmp_path: Path) -> None:
    model = create_model(_config("vit")).eval()
    with pytest.raises(RuntimeError, match=r"image int8: cosine similarity .* \(< 1.5\)"):
        export_onnx(model, tmp_path / "out", int8=True, int8_min_cosine=1.5)
    assert not (tmp_path / "out").exists()
