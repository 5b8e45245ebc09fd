"""SmolVLM / Idefics3 ONNX export: onnxruntime matches torch and transformers, quantized variants
load and stay close to float32, broken exports are refused and leave nothing, CLI errors."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vlkit
from vlkit.cli.export import export_command
from vlkit.cli.main import build_parser, main
from vlkit.inference import smolvlm_onnx_export as exporter
from vlkit.inference.onnx_int8 import quantize_onnx_int8
from vlkit.inference.smolvlm_onnx_export import ExportMismatch, export_smolvlm_onnx
from vlkit.inference.smolvlm_onnx_verify import (
    OnnxGraphs,
    quantized_agreement,
    verification_prompts,
)
from vlkit.models.decoder import DecoderConfig, DecoderLM

transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
from test_smolvlm_processor import _write_processor  # noqa: E402

VISION = {"image_size": 16, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 1,
          "num_attention_heads": 4, "intermediate_size": 32}  # fmt: skip
TEXT = {"hidden_size": 64, "intermediate_size": 56, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}  # fmt: skip
HF = {"smolvlm": ("SmolVLMConfig", "SmolVLMForConditionalGeneration"),
      "idefics3": ("Idefics3Config", "Idefics3ForConditionalGeneration")}  # fmt: skip


def _checkpoint(directory: Path, model_type: str) -> Path:
    """A tiny random checkpoint with the processor and tokenizer files of a real one."""
    _write_processor(directory)
    image_token = json.loads((directory / "tokenizer.json").read_text())["added_tokens"]
    image_token = next(t["id"] for t in image_token if t["content"] == "<image>")
    config_cls, model_cls = (getattr(transformers, name) for name in HF[model_type])
    config = config_cls(vision_config=VISION, text_config={**TEXT, "vocab_size": 320},
                        vocab_size=320, scale_factor=2, image_token_id=image_token)  # fmt: skip
    torch.manual_seed(0)
    model_cls(config).eval().save_pretrained(directory)
    return directory


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, dict]]:
    """(checkpoint, export dir, report) per model type; SmolVLM through the CLI with INT4."""
    out = {}
    for model_type, quantize in (("smolvlm", ["--quantize", "int4"]), ("idefics3", [])):
        source = _checkpoint(tmp_path_factory.mktemp(model_type), model_type)
        target = tmp_path_factory.mktemp(f"{model_type}_onnx") / "out"
        args = _parse(["export", "--model", str(source), "--format", "onnx", "--out", str(target),
                       *quantize])  # fmt: skip
        out[model_type] = (source, target, export_command(args))
    return out


def _graphs(target: Path, model, suffix: str = "") -> OnnxGraphs:  # noqa: ANN001
    onnx = target / "onnx"
    return OnnxGraphs(onnx / f"vision_encoder{suffix}.onnx", onnx / "embed_tokens.onnx",
                      onnx / f"decoder_model_merged{suffix}.onnx", model)  # fmt: skip


@pytest.mark.parametrize("model_type", list(HF))
def test_onnx_logits_match_transformers_and_vlkit(exported, model_type: str) -> None:
    source, target, report = exported[model_type]
    assert report["model_type"] == model_type and report["opset"] >= 18
    assert max(report["max_abs_diff"].values()) <= 1e-4
    names = {p.name for p in target.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json", "processor_config.json", "chat_template.json",
            "onnx"} <= names and "model.safetensors" not in names  # fmt: skip
    on_disk = json.loads((target / "onnx" / "vlkit_export.json").read_text())
    assert on_disk == {k: v for k, v in json.loads(json.dumps(report)).items() if k != "model"}
    for name, size in report["files"].items():
        assert (target / "onnx" / name).stat().st_size == size
    model = vlkit.from_pretrained(source)
    hf = getattr(transformers, HF[model_type][1]).from_pretrained(source).eval()
    graphs = _graphs(target, model)
    # Fresh prompts (not the export's own): one image; a left-padded batch with 2 + 1 images.
    for prompt in verification_prompts(model, seed=7):
        keep = prompt["attention_mask"].bool().numpy()
        got, present = graphs.step(graphs.prompt_embeds(prompt), prompt["attention_mask"].numpy(),
                                   prompt["position_ids"].numpy(), None)  # fmt: skip
        with torch.no_grad():
            expected = hf(**prompt).logits.numpy()
            ours = model(**prompt).logits.numpy()
        np.testing.assert_allclose(got[keep], expected[keep], rtol=0, atol=1e-4)
        np.testing.assert_allclose(got[keep], ours[keep], rtol=0, atol=1e-4)
        rows, length = prompt["input_ids"].shape
        assert present[0].shape == (rows, 2, length, 16)  # (B, kv_heads, past + L, head_dim)
    # Greedy decoding through the cache picks transformers' tokens.
    prompt = verification_prompts(model, seed=8)[1]
    _, tokens = graphs.greedy(prompt, 4)
    with torch.no_grad():
        inputs = {k: v for k, v in prompt.items() if k != "position_ids"}  # generate derives them
        reference = hf.generate(**inputs, max_new_tokens=4, do_sample=False)
    np.testing.assert_array_equal(tokens, reference[:, -4:].numpy())


def test_quantized_variants_load_and_stay_close(exported) -> None:
    source, target, report = exported["smolvlm"]
    model = vlkit.from_pretrained(source)
    int4 = report["quantization"]["int4"]
    assert int4["block_size"] == 32 and report["variants"] == ["fp32", "int4"]
    for name in ("vision_encoder", "decoder_model_merged"):
        assert report["files"][f"{name}_q4.onnx"] < report["files"][f"{name}.onnx"]
    fp32, q4 = _graphs(target, model), _graphs(target, model, "_q4")
    measured = quantized_agreement(fp32, q4, verification_prompts(model, seed=3), steps=4)
    assert measured["mean_cosine"] > 0.98 and int4["agreement_with_fp32"]["mean_cosine"] > 0.98
    assert 0.5 <= int4["agreement_with_fp32"]["greedy_agreement"] <= 1.0
    # INT8: the same quantizer the exporter runs, on the exported float32 files.
    onnx = target / "onnx"
    int8 = OnnxGraphs(quantize_onnx_int8((onnx / "vision_encoder.onnx").read_bytes()),
                      onnx / "embed_tokens.onnx",
                      quantize_onnx_int8((onnx / "decoder_model_merged.onnx").read_bytes()),
                      model)  # fmt: skip
    measured = quantized_agreement(fp32, int8, verification_prompts(model, seed=3), steps=4)
    assert measured["mean_cosine"] > 0.995 and measured["greedy_agreement"] >= 0.75


def _reuse_graphs(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    """Skip the (slow) tracing: the exporter gets the graphs already exported to `target`."""
    names = ("vision_encoder.onnx", "embed_tokens.onnx", "decoder_model_merged.onnx")
    files = {name: (target / "onnx" / name).read_bytes() for name in names}
    monkeypatch.setattr(exporter, "_export_graphs", lambda model, opset: dict(files))


def test_broken_model_is_refused_and_nothing_written(exported, monkeypatch, tmp_path) -> None:
    source, target, _ = exported["idefics3"]
    _reuse_graphs(monkeypatch, target)
    out = tmp_path / "out"
    assert export_smolvlm_onnx(source, out).max_abs_diff  # the reused graphs pass as they are
    model = vlkit.from_pretrained(source)
    with torch.no_grad():  # torch now differs from the exported graphs
        model.decoder.model.layers[1].mlp.down_proj.weight.mul_(1.01)
    model.train()
    with pytest.raises(ExportMismatch, match=r"onnxruntime logits differ from torch by .*"
                                             r"\(> 0.0001\).*nothing was written"):  # fmt: skip
        export_smolvlm_onnx(source, tmp_path / "broken", model=model)
    assert model.training  # the caller's mode is restored
    # A failure while writing (a full disk) removes the temporary directory too.
    monkeypatch.setattr(exporter.shutil, "copy2", _raise_disk_full)
    with pytest.raises(OSError, match="No space"):
        export_smolvlm_onnx(source, tmp_path / "full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _raise_disk_full(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
    raise OSError(28, "No space left on device")


def test_library_errors(exported, tmp_path) -> None:
    source, target, _ = exported["idefics3"]
    with pytest.raises(ValueError, match="already exists"):
        export_smolvlm_onnx(source, target)
    with pytest.raises(ValueError, match="quantize 'int2': choose int8 or int4"):
        export_smolvlm_onnx(source, tmp_path / "o", quantize="int2")
    with pytest.raises(ValueError, match="block_size 16: choose one of 32, 64, 128"):
        export_smolvlm_onnx(source, tmp_path / "o", block_size=16)
    with pytest.raises(ValueError, match="not a SmolVLM"):
        export_smolvlm_onnx(tmp_path, tmp_path / "o")
    assert sorted(tmp_path.iterdir()) == []


def _one_line_error(capsys, argv: list[str], expected: str) -> None:  # noqa: ANN001
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_cli_errors_are_one_line(exported, tmp_path, capsys, monkeypatch) -> None:
    source, target, _ = exported["smolvlm"]
    base = ["export", "--model", str(source), "--format", "onnx", "--out"]
    _one_line_error(capsys, [*base, str(target)], "already exists")
    fresh = str(tmp_path / "o")
    _one_line_error(capsys, [*base, fresh, "--quantize", "int3"], "--quantize int3: choose")
    _one_line_error(capsys, [*base, fresh, "--quantize", "int4", "--block-size", "48"],
                    "--block-size 48: choose 32, 64 or 128")  # fmt: skip
    _one_line_error(capsys, [*base, fresh, "--block-size", "64"], "applies to --quantize int4")
    _one_line_error(capsys, [*base, fresh, "--format", "tflite"], "--format tflite")
    _one_line_error(capsys, [*base, fresh, "--int8"], "--quantize int8")
    # A model kind without an ONNX export: a plain decoder LM.
    lm = tmp_path / "lm"
    DecoderLM(DecoderConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1,
                            num_heads=2, num_kv_heads=2)).save_pretrained(lm)  # fmt: skip
    _one_line_error(capsys, ["export", "--model", str(lm), "--out", fresh], "got DecoderLM")
    _one_line_error(capsys, ["export", "--model", str(lm), "--out", fresh, "--quantize", "int8"],
                    "--quantize applies to SmolVLM")  # fmt: skip
    _one_line_error(capsys, ["export", "--model", str(lm), "--out", fresh, "--block-size", "64"],
                    "--block-size applies to --quantize int4")  # fmt: skip
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # the export extra is not installed
    _one_line_error(capsys, [*base, fresh], "pip install 'vlkit[export]'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm"]
