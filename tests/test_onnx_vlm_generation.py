"""Generation over a SmolVLM ONNX export with onnxruntime alone (`vlkit.inference.onnx_vlm`):
greedy tokens equal vlkit's torch model and transformers' `generate` (one image, two images, a
left-padded batch of unequal prompts with a stop token), sampling warpers equal transformers',
streaming, variants, `vlkit generate` / the web app on the export, one-line errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vlkit
from vlkit.cli import main
from vlkit.data.smolvlm.processor import SmolVLMProcessor
from vlkit.inference.onnx_vlm import OnnxVLM
from vlkit.inference.onnx_vlm_sampling import Sampling, next_tokens, warp_logits

transformers = pytest.importorskip("transformers")
skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
from test_smolvlm_processor import _write_processor, write_random_smolvlm  # noqa: E402

PROMPT = "What is in this image?"
NEW = 8


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SmolVLM2 (32-px tiles, 4 tokens per tile, 2-layer GQA decoder)."""
    directory = _write_processor(tmp_path_factory.mktemp("smolvlm"), padding_side="left")
    write_random_smolvlm(directory)
    return directory


@pytest.fixture(scope="module")
def exported(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export of `source` (fp32 + q4 files), written by `vlkit export --format onnx`."""
    from vlkit.inference.smolvlm_onnx_export import export_smolvlm_onnx

    out = tmp_path_factory.mktemp("export") / "onnx_export"
    export_smolvlm_onnx(source, out, quantize="int4")
    return out


@pytest.fixture(scope="module")
def onnx_vlm(exported: Path) -> OnnxVLM:
    return OnnxVLM.load(exported, num_threads=1)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [Image.fromarray(skimage_data.chelsea()), Image.fromarray(skimage_data.astronaut())]


def _prompt(processor: SmolVLMProcessor, num_images: int, question: str) -> str:
    content = [{"type": "image"}] * num_images + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def _cases(processor: SmolVLMProcessor, images: list[Image.Image]) -> dict[str, dict]:
    """One image; two images; a left-padded batch of a short one-image and a long two-image
    prompt (a padding image in the first row)."""
    one = _prompt(processor, 1, PROMPT)
    two = _prompt(processor, 2, "Compare the two pictures, please, in a few words.")
    return {
        "one image": processor(text=one, images=[images[:1]]),
        "two images": processor(text=two, images=[images]),
        "left-padded batch": processor(
            text=[one, two], images=[images[:1], images], padding_side="left"
        ),  # fmt: skip
    }


def test_greedy_tokens_equal_torch_and_transformers(source, onnx_vlm, images) -> None:
    """Same tokens as `GenerativeVLM.generate` and transformers' `generate`, with a stop token
    that ends the batch's first row early (its later tokens are the pad token)."""
    processor = onnx_vlm.processor
    model = vlkit.from_pretrained(source).eval()
    reference = transformers.SmolVLMForConditionalGeneration.from_pretrained(source).eval()
    pad = processor.tokenizer.token_to_id("<|endoftext|>")
    for name, inputs in _cases(processor, images).items():
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        pixels, pixel_mask = inputs["pixel_values"], inputs["pixel_attention_mask"]
        free = onnx_vlm.generate(ids, mask, pixels, pixel_mask, max_new_tokens=NEW,
                                 eos_token_id=[])  # fmt: skip
        # A stop token the first row emits after its first token and no other row emits.
        others = set(free[1:, ids.shape[1] :].ravel().tolist())
        stop = [next(t for t in free[0, ids.shape[1] + 1 :].tolist() if t not in others)]
        ours = onnx_vlm.generate(ids, mask, pixels, pixel_mask, max_new_tokens=NEW,
                                 eos_token_id=stop, pad_token_id=pad)  # fmt: skip
        options = dict(max_new_tokens=NEW, do_sample=False, eos_token_id=stop, pad_token_id=pad)
        with torch.no_grad():
            torch_tokens = model.generate(ids, pixels, mask, pixel_attention_mask=pixel_mask,
                                          **options)  # fmt: skip
            hf_tokens = reference.generate(input_ids=ids, attention_mask=mask,
                                           pixel_values=pixels, pixel_attention_mask=pixel_mask,
                                           **options)  # fmt: skip
        assert ours.shape[1] > ids.shape[1] and stop[0] in ours[0, ids.shape[1] :], name
        np.testing.assert_array_equal(ours, torch_tokens.numpy(), err_msg=name)
        np.testing.assert_array_equal(ours, hf_tokens.numpy(), err_msg=name)
        if len(ids) == 2:  # the first row stopped early; the second ran on
            assert ours.shape[1] == ids.shape[1] + NEW and ours[0, -1] == pad, name


def test_sampling_warpers_equal_transformers_and_draws_are_seeded(onnx_vlm, images) -> None:
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = np.random.default_rng(0).normal(size=(3, 50)).astype(np.float32) * 3
    expected = torch.from_numpy(logits)
    for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(7), TopPLogitsWarper(0.8)):
        expected = warper(None, expected)
    np.testing.assert_allclose(warp_logits(logits, 0.7, 7, 0.8), expected.numpy(), rtol=1e-6)

    top_k = Sampling(do_sample=True, top_k=5, seed=1)
    draws = np.stack([next_tokens(logits, top_k, top_k.generator()) for _ in range(3)])
    assert (draws == draws[0]).all()  # one seed, one draw
    many = next_tokens(np.repeat(logits[:1], 400, 0), top_k, top_k.generator())
    assert set(many) == set(np.argsort(logits[0])[-5:].tolist())  # only and all of the top 5

    inputs = _cases(onnx_vlm.processor, images)["one image"]
    args = (inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
            inputs["pixel_attention_mask"])  # fmt: skip
    greedy = onnx_vlm.generate(*args, max_new_tokens=NEW, eos_token_id=[])
    one_token = Sampling(do_sample=True, top_k=1, temperature=0.5, seed=3)
    np.testing.assert_array_equal(
        onnx_vlm.generate(*args, max_new_tokens=NEW, sampling=one_token, eos_token_id=[]), greedy
    )
    hot = Sampling(do_sample=True, temperature=5.0, seed=4)
    first = onnx_vlm.generate(*args, max_new_tokens=NEW, sampling=hot, eos_token_id=[])
    np.testing.assert_array_equal(
        onnx_vlm.generate(*args, max_new_tokens=NEW, sampling=hot, eos_token_id=[]), first
    )
    with pytest.raises(ValueError, match="top_p=1.5"):
        Sampling(do_sample=True, top_p=1.5)


def test_streaming_gives_the_answer_piece_by_piece(onnx_vlm, images) -> None:
    inputs = _cases(onnx_vlm.processor, images)["one image"]
    args = (inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
            inputs["pixel_attention_mask"])  # fmt: skip
    seen: list[list[int]] = []
    sequence = onnx_vlm.generate(*args, max_new_tokens=NEW, eos_token_id=[],
                                 streamer=lambda tokens: seen.append(tokens.tolist()))  # fmt: skip
    new = sequence[0, inputs["input_ids"].shape[1] :]
    assert [row[0] for row in seen] == new.tolist()
    pieces = list(onnx_vlm.stream(*args, max_new_tokens=NEW, eos_token_id=[]))
    assert len(pieces) > 1 and "".join(pieces) == onnx_vlm.decode(new)


def test_generate_cli_and_web_app_answer_as_the_torch_checkpoint(
    source, exported, images, tmp_path, capsys
) -> None:
    from vlkit.serve.generative import load_served_vlm

    photo = tmp_path / "cat.png"
    images[0].save(photo)
    argv = ["generate", "--image", str(photo), "--prompt", PROMPT, "--max-new-tokens", "6"]
    assert main([*argv, "--model", str(source)]) == 0
    expected = capsys.readouterr().out
    assert main([*argv, "--model", str(exported)]) == 0
    assert capsys.readouterr().out == expected and expected.strip()
    assert main([*argv, "--model", str(exported), "--onnx-variant", "q4"]) == 0
    assert capsys.readouterr().out.strip()
    sampled = [*argv, "--model", str(exported), "--do-sample", "--temperature", "3", "--seed", "5"]
    assert main(sampled) == 0 and main(sampled) == 0
    twice = capsys.readouterr().out  # the same answer twice: --seed seeds the numpy sampler
    assert twice.strip() and twice[: len(twice) // 2] == twice[len(twice) // 2 :]

    served = load_served_vlm(str(exported))
    assert served.info()["kind"] == "smolvlm-onnx" and served.info()["onnx_variant"] == "fp32"
    answer = served.answer(images[:1], PROMPT, max_new_tokens=6)
    assert answer.text == expected.rstrip("\n") and 1 <= answer.tokens <= 6


def test_errors_are_one_line(source, exported, tmp_path, capsys, monkeypatch) -> None:
    photo = tmp_path / "cat.png"
    Image.fromarray(skimage_data.chelsea()).save(photo)
    argv = ["generate", "--image", str(photo), "--prompt", PROMPT]

    def error(*extra: str) -> str:
        assert main([*argv, *extra]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert "decoder_model_merged_int8.onnx: no such file" in error(
        "--model", str(exported), "--onnx-variant", "int8"
    )
    assert "--onnx-variant int8" in error("--model", str(exported), "--int8")
    assert "--onnx-variant q4" in error("--model", str(exported), "--int4")
    assert "--onnx-variant needs" in error("--model", str(source), "--onnx-variant", "q4")
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "onnx" / "embed_tokens.onnx").unlink()
    assert "embed_tokens.onnx: no such file" in error("--model", str(broken))
    # A processor config that no longer matches the exported vision graph (64-px tiles for a
    # 32-px graph): one line naming both sizes, not onnxruntime's traceback.
    resized = tmp_path / "resized"
    shutil.copytree(exported, resized)
    config_path = resized / "preprocessor_config.json"
    config = json.loads(config_path.read_text())
    config["max_image_size"] = {"longest_edge": 64}
    config_path.write_text(json.dumps(config))
    assert "vision_encoder takes 32x32" in error("--model", str(resized))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # the export extra not installed
    assert "pip install 'vlkit[export]'" in error("--model", str(exported))
