"""ONNX export: onnxruntime matches torch for ViT, ResNet and SigLIP towers; the CLI round-trips."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from vlkit.cli.export import export_command
from vlkit.cli.main import build_parser, main
from vlkit.inference import OnnxCLIP, export_onnx
from vlkit.models.clip import CLIP, create_model
from vlkit.models.presets import PRESETS
from vlkit.models.resnet import ResNetConfig

PARITY_ATOL = 1e-5  # fp32


def _tiny_text(config, **changes):  # noqa: ANN001, ANN202
    # A 1,000-token vocabulary keeps the text encoder file (and its export) small.
    return replace(config.text, vocab_size=1000, context_length=16, **changes)


def _config(kind: str):  # noqa: ANN202
    tiny = PRESETS["tiny"]
    if kind == "vit":
        return replace(tiny, text=_tiny_text(tiny))
    if kind == "resnet":
        vision = ResNetConfig(image_size=32, layers=(1, 1, 1, 1), width=8, heads=4, output_dim=64)
        return replace(tiny, vision=vision, text=_tiny_text(tiny), vision_projection=False)
    siglip = PRESETS["siglip-b-16-224"]
    vision = replace(siglip.vision, image_size=32, patch_size=8, width=64, layers=2, heads=4,
                     mlp_dim=128)  # fmt: skip
    text = replace(siglip.text, vocab_size=1000, context_length=16, width=64, layers=2, heads=4,
                   mlp_dim=128)  # fmt: skip
    preprocess = replace(siglip.preprocess, image_size=32)
    return replace(siglip, vision=vision, text=text, embed_dim=64, preprocess=preprocess)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """(model, export dir) per kind, each exported once (export takes seconds) and shared."""
    cache: dict[str, tuple[CLIP, Path]] = {}

    def get(kind: str) -> tuple[CLIP, Path]:
        if kind not in cache:
            torch.manual_seed(0)
            model = create_model(_config(kind)).eval()
            with torch.no_grad():  # a logit scale that the clamp at 100 does not hide
                model.logit_scale.fill_(math.log(20.0))
            out = tmp_path_factory.mktemp(f"onnx_{kind}")
            report = export_onnx(model, out)
            assert max(report.max_abs_diff.values()) < 1e-4
            cache[kind] = (model, out)
        return cache[kind]

    return get


def _ids(model: CLIP, batch: int) -> torch.Tensor:
    text = model.config.text
    return torch.randint(0, text.vocab_size, (batch, text.context_length))


@pytest.mark.parametrize("kind", ["vit", "resnet", "siglip"])
@torch.no_grad()
def test_parity_with_torch_on_two_batch_sizes(exported, kind: str) -> None:
    model, out = exported(kind)
    onnx_model = OnnxCLIP.load(out)
    size = model.config.vision.image_size
    for batch in (1, 4):  # one exported file, dynamic batch axis
        pixels = torch.randn(batch, 3, size, size)
        image = onnx_model.encode_image(pixels)
        assert image.shape == (batch, 64) and image.dtype == np.float32
        expected = model.encode_image(pixels, normalize=True).numpy()
        np.testing.assert_allclose(image, expected, rtol=0, atol=PARITY_ATOL)
        ids = _ids(model, batch)
        text = onnx_model.encode_text(ids.numpy())
        expected = model.encode_text(ids, normalize=True).numpy()
        np.testing.assert_allclose(text, expected, rtol=0, atol=PARITY_ATOL)
        np.testing.assert_allclose(np.linalg.norm(text, axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["vit", "siglip"])
@torch.no_grad()
def test_logits_and_zero_shot_ranking_match(exported, kind: str) -> None:
    model, out = exported(kind)
    onnx_model = OnnxCLIP.load(out)
    pixels, ids = torch.randn(3, 3, 32, 32), _ids(model, 6)
    image, text = onnx_model.encode_image(pixels), onnx_model.encode_text(ids)
    logits = onnx_model.logits(image, text)
    expected = model.logits(model.encode_image(pixels), model.encode_text(ids)).numpy()
    assert logits.shape == (3, 6)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(logits.argsort(axis=1), expected.argsort(axis=1))
    config = json.loads((out / "onnx_config.json").read_text())
    assert config["temperature"] == pytest.approx(model.temperature().item())
    if kind == "siglip":
        assert config["logit_bias"] == onnx_model.logit_bias == -10.0
        assert config["text_inputs"] == ["input_ids", "attention_mask"]
        assert config["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    else:
        assert config["logit_bias"] is None and config["text_inputs"] == ["input_ids"]


@torch.no_grad()
def test_siglip_padding_mask_matches_torch(exported) -> None:
    model, out = exported("siglip")
    onnx_model = OnnxCLIP.load(out)
    ids = _ids(model, 2)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    got = onnx_model.encode_text(ids, mask)
    np.testing.assert_allclose(
        got, model.encode_text(ids, mask, normalize=True).numpy(), rtol=0, atol=PARITY_ATOL
    )
    # The mask changes the padded row (bidirectional attention), so it really reached the graph.
    assert np.abs(got[1] - onnx_model.encode_text(ids)[1]).max() > 1e-3


def test_input_errors_name_expected_and_got_shapes(exported) -> None:
    _, out = exported("vit")
    onnx_model = OnnxCLIP.load(out)
    with pytest.raises(ValueError, match=r"\(batch, 3, 32, 32\), got \(2, 3, 64, 64\)"):
        onnx_model.encode_image(np.zeros((2, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match=r"\(batch, 16\), got \(2, 8\)"):
        onnx_model.encode_text(np.zeros((2, 8), np.int64))
    with pytest.raises(ValueError, match="without an attention_mask input"):
        onnx_model.encode_text(np.ones((1, 16), np.int64), np.zeros((1, 16), np.int64))


def test_missing_file_or_key_is_named(exported, tmp_path: Path) -> None:
    _, out = exported("vit")
    config = json.loads((out / "onnx_config.json").read_text())
    (tmp_path / "image_encoder.onnx").write_bytes((out / "image_encoder.onnx").read_bytes())
    (tmp_path / "onnx_config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match=r"text_encoder\.onnx: no such file"):
        OnnxCLIP.load(tmp_path)
    (tmp_path / "text_encoder.onnx").write_bytes((out / "text_encoder.onnx").read_bytes())
    del config["temperature"]
    (tmp_path / "onnx_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"onnx_config\.json: missing keys \['temperature'\]"):
        OnnxCLIP.load(tmp_path)


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)  # the `vlkit` command's own parser


@torch.no_grad()
def test_cli_round_trip_without_normalization(tmp_path: Path) -> None:
    model = create_model(_config("vit")).eval()
    model.save_pretrained(tmp_path / "ckpt")
    args = _parse(["export", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "onnx"),
                   "--no-normalize"])  # fmt: skip
    report = export_command(args)
    assert report["normalize"] is False and isinstance(report["opset"], int)
    assert set(report["max_abs_diff"]) == {"image_batch2", "image_batch3", "text_batch2",
                                           "text_batch3"}  # fmt: skip
    assert max(report["max_abs_diff"].values()) < 1e-4
    for name in ("image_encoder.onnx", "text_encoder.onnx", "onnx_config.json"):
        assert report["file_sizes"][name] == (tmp_path / "onnx" / name).stat().st_size > 0
    json.dumps(report)  # the CLI prints it as JSON
    onnx_model = OnnxCLIP.load(tmp_path / "onnx")
    assert onnx_model.normalize is False
    pixels, ids = torch.randn(4, 3, 32, 32), _ids(model, 4)
    image, text = onnx_model.encode_image(pixels), onnx_model.encode_text(ids)
    np.testing.assert_allclose(image, model.encode_image(pixels).numpy(), rtol=0, atol=PARITY_ATOL)
    np.testing.assert_allclose(text, model.encode_text(ids).numpy(), rtol=0, atol=PARITY_ATOL)
    assert np.abs(np.linalg.norm(image, axis=-1) - 1).max() > 1e-2  # raw, not unit length
    np.testing.assert_allclose(
        onnx_model.logits(image, text),
        model.logits(torch.from_numpy(image), torch.from_numpy(text)).numpy(),
        rtol=0,
        atol=1e-4,
    )


def test_cli_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such checkpoint"):
        export_command(_parse(["export", "--model", str(tmp_path / "nope"), "--out", "x"]))
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        export_command(_parse(["export", "--model", "m", "--out", str(tmp_path / "file")]))
    with pytest.raises(ValueError, match="--opset 17: the ONNX exporter supports 18 or later"):
        export_command(_parse(["export", "--model", "m", "--out", "x", "--opset", "17"]))
    with pytest.raises(ValueError, match="opset 13"):
        export_onnx(create_model(_config("vit")), tmp_path / "out", opset=13)
    assert not (tmp_path / "out").exists()
    assert main(["export", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2


def test_failed_verification_raises_and_writes_nothing(tmp_path: Path) -> None:
    model = create_model(_config("vit")).train()
    with pytest.raises(RuntimeError, match=r"image: onnxruntime differs from torch by .* \(> -1\)"):
        export_onnx(model, tmp_path / "out", atol=-1.0)  # no difference passes a negative bound
    assert not (tmp_path / "out").exists()
    assert model.training  # the caller's mode is restored


@torch.no_grad()
def test_cli_int8_writes_checked_int8_towers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    create_model(_config("vit")).save_pretrained(tmp_path / "ckpt")
    args = _parse(["export", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "onnx"),
                   "--int8"])  # fmt: skip
    report = export_command(args)
    assert set(report["int8_min_cosine"]) == {"image", "text"}
    assert min(report["int8_min_cosine"].values()) >= 0.99  # the export's own check
    for tower in ("image_encoder", "text_encoder"):
        assert report["file_sizes"][f"{tower}.int8.onnx"] < report["file_sizes"][f"{tower}.onnx"]
    json.dumps(report)
    config = json.loads((tmp_path / "onnx" / "onnx_config.json").read_text())
    assert config["int8"]["per_channel"] is True and config["int8"]["weight_type"] == "int8"
    int8 = OnnxCLIP.load(tmp_path / "onnx", int8=True, num_threads=1)
    assert int8.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    assert not _parse(["export", "--model", "m", "--out", "o"]).int8


def test_load_int8_without_int8_export_names_the_flag(exported) -> None:
    _, out = exported("vit")  # exported without int8
    assert json.loads((out / "onnx_config.json").read_text())["int8"] is None
    with pytest.raises(
        FileNotFoundError, match=r"image_encoder\.int8\.onnx: .*vlkit export --int8"
    ):
        OnnxCLIP.load(out, int8=True)
