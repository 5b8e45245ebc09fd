"""LLaVA ONNX export (`vlkit.inference.llava_onnx_export`) run with onnxruntime alone: prompt
logits equal transformers' `LlavaForConditionalGeneration` and vlkit's `LlavaVLM` (1e-4), greedy
tokens equal transformers' `generate` on a left-padded batch with two images in a row, and
`vlkit generate --model EXPORT` prints transformers' answer. One export (by `vlkit export`, with
INT8 files) is shared by the module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vlkit
from vlkit.cli.main import main
from vlkit.inference.onnx_vlm import OnnxVLM
from vlkit.inference.vlm_loading import load_vlm

transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
from parity.photos import astronaut, coffee  # noqa: E402
from parity.test_transformers_llava import (  # noqa: E402
    CHAT_TEMPLATE,
    PATCH,
    PROCESSOR_SIZE,
    TEXT,
    VISION,
    _config,
    _tokenizer,
)

NEW = 8


def write_random_llava(directory: Path) -> Path:
    """A tiny random llava-hf-style directory: CLIP tower ("default" strategy, hidden -2),
    GQA Llama, left-padding tokenizer, chat template, generation_config (eos 2, pad 3)."""
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    config = _config(
        vision_config={**VISION, "image_size": PROCESSOR_SIZE, "patch_size": PATCH},
        text_config={**TEXT, "vocab_size": tokenizer.get_vocab_size(), "pad_token_id": 3,
                     "eos_token_id": 2, "bos_token_id": 1, "num_key_value_heads": 2},
        image_token_index=tokenizer.token_to_id("<image>"), vision_feature_layer=-2,
    )  # fmt: skip
    transformers.LlavaForConditionalGeneration(config).save_pretrained(directory)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", padding_side="left", extra_special_tokens={"image_token": "<image>"},
    )  # fmt: skip
    images = transformers.CLIPImageProcessor(
        size={"shortest_edge": PROCESSOR_SIZE},
        crop_size={"height": PROCESSOR_SIZE, "width": PROCESSOR_SIZE},
    )
    transformers.LlavaProcessor(
        images, fast, patch_size=PATCH, vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1,
    ).save_pretrained(directory)  # fmt: skip
    return directory


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def exported(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`vlkit export --model SOURCE --format onnx --quantize int8` (fp32 + INT8 files)."""
    out = tmp_path_factory.mktemp("export") / "llava_onnx"
    code = main(["export", "--model", str(source), "--format", "onnx", "--out", str(out),
                 "--quantize", "int8"])  # fmt: skip
    assert code == 0
    return out


@pytest.fixture(scope="module")
def reference(source: Path):
    return transformers.LlavaForConditionalGeneration.from_pretrained(source).eval()


def _batch(processor) -> dict[str, torch.Tensor]:
    """A left-padded batch: a one-image prompt and a longer two-image prompt."""
    one = "USER: <image>\nWhat is in this image? ASSISTANT:"
    two = "USER: <image>\n<image>\nWhat is in these two images, an astronaut? ASSISTANT:"
    photos = [coffee().convert("RGB"), astronaut().convert("RGB"), coffee().convert("RGB")]
    return processor(text=[one, two], images=photos, padding=True, padding_side="left")


def _prompt_logits(onnx: OnnxVLM, ids, mask, pixels) -> tuple[np.ndarray, list, np.ndarray]:
    """One merged-decoder call over the prompt with an empty cache: (B, L, V) logits, the
    present keys/values and the (B, L) positions (cumsum(mask) - 1, 0 at left padding)."""
    mask = mask.numpy()
    positions = np.where(mask == 0, 0, np.cumsum(mask, axis=1) - 1)
    past = [np.zeros((len(mask), onnx.num_kv_heads, 0, onnx.head_dim), np.float32)]
    logits, present = onnx.decode_step(
        onnx.embed(ids, pixels), mask, positions, past * len(onnx.past_names)
    )
    return logits, present, positions


def test_export_layout_and_logits_match_transformers(source, exported, reference) -> None:
    """The files written, the report's checks, and onnxruntime's prompt logits against
    transformers and vlkit on processor-made inputs (padding positions skipped)."""
    files = {p.name for p in (exported / "onnx").iterdir()}
    assert files == {"vision_encoder.onnx", "embed_tokens.onnx", "decoder_model_merged.onnx",
                     "vision_encoder_int8.onnx", "decoder_model_merged_int8.onnx",
                     "vlkit_export.json"}  # fmt: skip
    for name in ("config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja",
                 "processor_config.json"):  # fmt: skip
        assert (exported / name).read_bytes() == (source / name).read_bytes(), name
    report = json.loads((exported / "onnx" / "vlkit_export.json").read_text())
    assert report["model_type"] == "llava" and report["variants"] == ["fp32", "int8"]
    assert max(report["max_abs_diff"].values()) <= 1e-4
    assert report["graphs"]["image_seq_len"] == 25 and report["graphs"]["num_kv_heads"] == 2
    assert report["quantization"]["int8"]["agreement_with_fp32"]["mean_cosine"] > 0.99

    onnx = OnnxVLM.load(exported, num_threads=1)
    inputs = _batch(onnx.processor)
    ids, mask, pixels = inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"]
    assert pixels.shape == (3, 3, PROCESSOR_SIZE, PROCESSOR_SIZE) and int(mask[0, 0]) == 0
    logits, present, positions = _prompt_logits(onnx, ids, mask, pixels)
    assert present[0].shape == (2, 2, ids.shape[1], onnx.head_dim)
    model = vlkit.from_pretrained(source).eval()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, pixel_values=pixels,
                             position_ids=torch.from_numpy(positions)).logits  # fmt: skip
        ours = model(ids, pixels, mask, position_ids=torch.from_numpy(positions)).logits
    keep = mask.numpy().astype(bool)
    np.testing.assert_allclose(logits[keep], expected.numpy()[keep], atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits[keep], ours.numpy()[keep], atol=1e-4, rtol=0)


def test_greedy_tokens_equal_transformers(source, exported, reference) -> None:
    """`OnnxVLM.generate` (defaults from generation_config.json: eos 2, pad 3) gives
    transformers' and vlkit's greedy tokens on the left-padded batch; the INT8 files
    (`--onnx-variant int8`) give logits close to float32's."""
    onnx = OnnxVLM.load(exported, num_threads=1)
    inputs = _batch(onnx.processor)
    ids, mask, pixels = inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"]
    ours = onnx.generate(ids, mask, pixels, max_new_tokens=NEW)
    model = vlkit.from_pretrained(source).eval()
    with torch.no_grad():
        hf = reference.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels,
                                max_new_tokens=NEW, do_sample=False)  # fmt: skip
        torch_tokens = model.generate(ids, pixels, mask, max_new_tokens=NEW)
    assert ours.shape[1] > ids.shape[1]
    np.testing.assert_array_equal(ours, hf.numpy())
    np.testing.assert_array_equal(ours, torch_tokens.numpy())
    last = []
    for graphs in (onnx, OnnxVLM.load(exported, "int8", num_threads=1)):
        last.append(_prompt_logits(graphs, ids, mask, pixels)[0][:, -1])  # (2, V)
    cosine = (last[0] * last[1]).sum(-1) / np.linalg.norm(last[0], axis=-1)
    cosine /= np.linalg.norm(last[1], axis=-1)
    assert not np.array_equal(last[0], last[1]) and cosine.min() > 0.99, cosine


def test_cli_generate_on_the_export(source, exported, reference, tmp_path, capsys) -> None:
    """`vlkit generate --model EXPORT --image X --prompt ...` prints transformers' greedy
    answer (LLaVA's chat template and processor), as `vlkit generate --model SOURCE` does."""
    photo = tmp_path / "coffee.png"
    coffee().save(photo)
    processor = transformers.AutoProcessor.from_pretrained(source)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=text, images=coffee().convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        out = reference.generate(**inputs, max_new_tokens=NEW, do_sample=False)
    expected = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(expected) > 4
    assert load_vlm(exported).kind == "llava-onnx"
    answers = []
    for model in (exported, source):
        code = main(["generate", "--model", str(model), "--image", str(photo), "--prompt",
                     "What?", "--max-new-tokens", str(NEW)])  # fmt: skip
        assert code == 0
        answers.append(capsys.readouterr().out.rstrip("\n"))
    assert answers == [expected.rstrip("\n")] * 2


def test_export_errors_are_one_line(source, exported, tmp_path, capsys) -> None:
    """An existing --out and a bad --quantize on a LLaVA directory: exit 2, one stderr line,
    nothing written; a LLaVA export refuses --video."""
    for argv, needle in (
        (["--out", str(exported)], "already exists"),
        (["--out", str(tmp_path / "new"), "--quantize", "int3"], "--quantize int3"),
    ):
        code = main(["export", "--model", str(source), "--format", "onnx", *argv])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match="takes images, not video"):
        load_vlm(exported).prepare([], "Hi", video=object())
