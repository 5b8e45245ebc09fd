"""The scripts in examples/ run (in their `--quick` mode) and print sane numbers.

Each example runs as a subprocess from the repository root, as its docstring says to, with
its outputs in a temporary directory; the printed numbers are parsed and checked.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180


def _run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, f"examples/{script}", "--quick", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the output:\n{text}"
    return float(match.group(1))


def _fraction(pattern: str, text: str) -> float:
    value = _number(pattern, text)
    assert 0.0 <= value <= 1.0, f"{pattern!r}: {value} is not in [0, 1]"
    return value


def test_clip_zero_shot_and_retrieval(tmp_path: Path) -> None:
    out = _run("clip_zero_shot_and_retrieval.py", "--out", str(tmp_path))
    assert _number(r"trained (\d+) steps", out) == 20
    first, last = re.search(r"loss ([\d.]+) -> ([\d.]+)", out).groups()
    assert 0 < float(last) < float(first)
    _fraction(r"top-1 \(13-phrasing ensemble\): ([\d.]+)", out)
    _fraction(r"top-1 \(class name only\): ([\d.]+)", out)
    for key in ("i2t R@1", "i2t R@1 [\\d.]+ R@5", "t2i R@1", "t2i R@1 [\\d.]+ R@5"):
        _fraction(key + r" ([\d.]+)", out)
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_image_search(tmp_path: Path) -> None:
    out = _run("image_search.py", "--out", str(tmp_path))
    assert _number(r"indexed (\d+) images", out) == 48
    _fraction(r"precision@5 over \d+ classes: ([\d.]+)", out)
    self_first = re.search(r"self is the top hit for (\d+)/(\d+) queries", out).groups()
    assert self_first == ("48", "48")
    assert _number(r"0\.png \(\w+ \w+\) -> 0\.png \w+ \w+ \(([\d.]+)\)", out) > 0.9999
    _fraction(r"same class: ([\d.]+)", out)


def test_onnx_export(tmp_path: Path) -> None:
    out = _run("onnx_export.py", "--out", str(tmp_path))
    assert _number(r"export check max \|diff\| ([\d.e+-]+)", out) < 1e-4
    assert _number(r"image embeddings ([\d.e+-]+)", out) < 1e-4
    assert _number(r"text embeddings ([\d.e+-]+)", out) < 1e-4
    assert _number(r"same top-1 ([\d.]+)", out) == 1.0
    assert _number(r"same full ranking ([\d.]+)", out) == 1.0
    assert (tmp_path / "image_encoder.onnx").is_file()


def test_train_vqa_llava(tmp_path: Path) -> None:
    out = _run("train_vqa_llava.py", "--out", str(tmp_path))
    assert _number(r"trained (\d+) steps", out) == 20
    _fraction(r"test accuracy ([\d.]+) on 32 questions", out)
    assert len(re.findall(r"^Q: .* A: .*\(truth: .+\)$", out, flags=re.M)) == 6
    assert len(re.findall(r"^free-text Q: .* A: \S+", out, flags=re.M)) == 2
    assert (tmp_path / "vlm_config.json").is_file()


def test_smolvlm_tiny_random(tmp_path: Path) -> None:
    out = _run("smolvlm_tiny_random.py", "--out", str(tmp_path))
    assert _number(r"max \|vlkit - transformers\| logits: ([\d.e+-]+)", out) < 1e-4
    assert "greedy tokens identical: True" in out
    assert "pixel_values (1, 7, 3, 32, 32)" in out


def test_fusion_modules() -> None:
    out = _run("fusion_modules.py")
    assert re.search(r"^LLaVA projector\s+\(2, 49, 96\)", out, flags=re.M)
    assert re.search(r"^pixel-shuffle connector\s+\(2, 16, 96\)", out, flags=re.M)
    assert re.search(r"^Perceiver resampler\s+\(2, 8, 64\)", out, flags=re.M)
    assert re.search(r"^Q-Former\s+\(2, 8, 96\)", out, flags=re.M)
    assert _number(r"at init: max \|out - text\| = ([\d.e+-]+)", out) == 0.0
    assert _number(r"gates at 1: max \|out - text\| = ([\d.e+-]+)", out) > 0.0
    assert "image slots hold the projected tokens: True" in out


def test_chameleon_easy_vqa(tmp_path: Path) -> None:
    out = _run("chameleon_easy_vqa.py", "--out", str(tmp_path))
    assert _number(r"test reconstruction PSNR ([\d.]+) dB on 24 images", out) > 0
    assert 1 <= _number(r"code perplexity ([\d.]+) of 128", out) <= 128
    _fraction(r"codes used ([\d.]+)", out)
    assert _number(r"pixel readout matches the label: originals ([\d.]+)", out) >= 0.9
    assert _number(r"vocabulary (\d+) \(17 words \+ <boi>/<eoi> \+ 128 codes\)", out) == 147
    _fraction(r"caption exact match ([\d.]+) on 24 test images", out)
    assert _number(r"text -> image: (\d+) images", out) == 24
    _fraction(r"pixel readout matches the caption ([\d.]+)", out)
    for name in ("tokenizer/vq_tokenizer_config.json", "chameleon/chameleon_config.json"):
        assert (tmp_path / name).is_file()
    for name in ("chameleon_reconstructions.png", "chameleon_generated.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 1000
