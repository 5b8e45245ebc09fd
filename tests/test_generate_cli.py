"""`vlkit generate`: SmolVLM directories end to end against transformers, and fusion VLM runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from vlkit.cli import main
from vlkit.data.smolvlm.processor import SmolVLMProcessor

transformers = pytest.importorskip("transformers")
skimage_data = pytest.importorskip("skimage.data")
from test_smolvlm_processor import SEQ, _write_processor, write_random_smolvlm  # noqa: E402

PROMPT = "What is in this image?"


@pytest.fixture(scope="module")
def smolvlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SmolVLM2 (tiles of 32 px, 4 tokens per tile) with its processor files."""
    directory = _write_processor(tmp_path_factory.mktemp("smolvlm"))
    write_random_smolvlm(directory)
    assert SEQ == (32 // 4) ** 2 // 4**2  # 32-px tiles, 4-px patches, scale factor 4
    return directory


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "chelsea.png"
    Image.fromarray(skimage_data.chelsea()).save(path)
    return path


def _reference_text(directory: Path, image: Image.Image, max_new_tokens: int) -> str:
    """transformers' processor + `generate` (greedy), decoded without special tokens."""
    from transformers.models.smolvlm import processing_smolvlm

    from vlkit.data.smolvlm.prompts import number_to_words

    if processing_smolvlm.num2words is None:  # transformers refuses to load without it
        processing_smolvlm.num2words = number_to_words
    processor = transformers.SmolVLMProcessor.from_pretrained(directory)
    model = transformers.SmolVLMForConditionalGeneration.from_pretrained(directory).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=text, images=[[image]], return_tensors="pt")
    stops = SmolVLMProcessor.from_pretrained(directory).stop_token_ids
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=stops, pad_token_id=stops[0])  # fmt: skip
    new = out[0, inputs["input_ids"].shape[1] :]
    return processor.decode(new, skip_special_tokens=True)


def test_smolvlm_generate_streams_the_transformers_answer(smolvlm_dir, photo, capsys) -> None:
    code = main(["generate", "--model", str(smolvlm_dir), "--image", str(photo),
                 "--prompt", PROMPT, "--max-new-tokens", "12"])  # fmt: skip
    assert code == 0
    streamed = capsys.readouterr().out.rstrip("\n")
    expected = _reference_text(smolvlm_dir, Image.open(photo).convert("RGB"), 12)
    assert expected.strip() and streamed == expected


def test_smolvlm_generate_int8_and_video(smolvlm_dir, photo, tmp_path, capsys) -> None:
    code = main(["generate", "--model", str(smolvlm_dir), "--image", str(photo),
                 "--prompt", PROMPT, "--max-new-tokens", "6", "--int8"])  # fmt: skip
    assert code == 0 and capsys.readouterr().out.strip()
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        Image.fromarray(skimage_data.astronaut()[i * 40 : i * 40 + 200, :200]).save(
            frames / f"{i:03d}.png"
        )
    code = main(["generate", "--model", str(smolvlm_dir), "--video", str(frames),
                 "--prompt", "What happens?", "--max-new-tokens", "4"])  # fmt: skip
    assert code == 0 and capsys.readouterr().out.strip()


def test_generate_errors_are_one_line(smolvlm_dir, tmp_path, capsys) -> None:
    code = main(["generate", "--model", str(smolvlm_dir), "--image", str(tmp_path / "no.png"),
                 "--prompt", PROMPT])  # fmt: skip
    assert code == 2 and "no.png: no such file" in capsys.readouterr().err
    code = main(["generate", "--model", str(tmp_path / "missing"), "--prompt", PROMPT])
    assert code == 2 and "no such model directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["generate", "--model", str(smolvlm_dir), "--video", str(empty), "--prompt", "x"])
    assert code == 2 and "no frame images" in capsys.readouterr().err
