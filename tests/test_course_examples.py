"""The course chapters in examples/course/ run in their `--quick` mode and print what they claim.

Unlike tests/test_examples.py (one subprocess per script), the scripts run in this process
through their `main(argv)`: eight interpreter starts with torch would cost more than the
chapters themselves. Every model is built here at random (tiny presets): no download, no
checkpoint from another run.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
import torch

COURSE = Path(__file__).resolve().parents[1] / "examples" / "course"


def _run(script: str, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    sys.path.insert(0, str(COURSE))  # the scripts import course_models by name, as when run
    threads = torch.get_num_threads()  # the scripts set one thread, and ch4 the print format
    try:
        spec = importlib.util.spec_from_file_location(f"course_{script}", COURSE / f"{script}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main(["--quick", *args])
    finally:
        sys.path.remove(str(COURSE))
        torch.set_num_threads(threads)
        torch.set_printoptions(profile="default")
    return capsys.readouterr().out


def _floats(pattern: str, text: str) -> list[tuple[float, ...]]:
    found = [tuple(float(g) for g in m.groups()) for m in re.finditer(pattern, text)]
    assert found, f"{pattern!r} not in the output:\n{text}"
    return found


def test_ch1_zero_shot_and_the_hard_case(capsys):
    out = _run("ch1_zero_shot", capsys)
    assert "tiny CLIP, random weights" in out
    assert len(re.findall(r"top-3: ", out)) == 6
    pairs = _floats(r"generic: p\('[^']+'\) = ([\d.]+) vs p\('[^']+'\) = ([\d.]+)", out)
    pairs += _floats(r"exclusive: p\('[^']+'\) = ([\d.]+) vs p\('[^']+'\) = ([\d.]+)", out)
    assert len(pairs) == 12
    for a, b in pairs:  # a two-label softmax
        assert a + b == pytest.approx(1.0, abs=2e-3)


def test_ch2_temperature_sharpens_the_softmax(capsys, tmp_path):
    out = _run("ch2_temperature", capsys, "--plot", str(tmp_path / "tau.png"))
    rows = _floats(r"tau = [\d.]+ +top p ([\d.]+) +entropy ([\d.]+) nats +99% mass in +(\d+)", out)
    assert len(rows) == 4  # 0.01, 0.07, 0.5 and the learned one
    (p1, h1, n1), (p2, h2, n2), (p3, h3, n3) = rows[:3]
    assert p1 >= p2 >= p3 and h1 <= h2 <= h3 and n1 <= n2 <= n3
    assert h3 <= math.log(24) + 1e-9
    assert (tmp_path / "tau.png").read_bytes()[:4] == b"\x89PNG"


def test_ch3_vit_internals(capsys):
    out = _run("ch3_vit_internals", capsys)
    assert "4 x 4 = 16 patches + CLS = 17 tokens" in out
    (diff,) = _floats(r"conv vs unfold @ W, max \|diff\| ([\d.e+-]+)", out)[0]
    assert diff < 1e-5
    hits = _floats(r"-> (\d)/5 on the shape \((\d+) of 16 patches are\)", out)
    assert len(hits) == 4 and all(h <= min(5, n) for h, n in hits)
    weights = _floats(r"\(\d,\d\): ([\d.]+)", out)
    assert len(weights) == 20 and all(0 < w <= 1 for (w,) in weights)


def test_ch4_cross_modal_attention_matches_the_hand_computation(capsys):
    out = _run("ch4_cross_modal_attention", capsys)
    (att, outputs), = _floats(r"max \|vlkit - hand\| attention ([\d.e+-]+), outputs ([\d.e+-]+)",
                              out)  # fmt: skip
    assert att < 1e-6 and outputs < 1e-5
    (sdpa,) = _floats(r"max \|vlkit - torch sdpa\| ([\d.e+-]+)", out)[0]
    assert sdpa < 1e-5
    assert "[0.4011, 0.1978, 0.4011]" in out and "[3.0000, 4.0000]" in out
    assert "[0.6698, 0.3302, 0.0000]" in out  # patch 3 masked


def test_ch5_infonce_gradient_and_mi_bound(capsys):
    out = _run("ch5_infonce", capsys)
    (dx, dy), = _floats(r"d/dx ([\d.e+-]+), d/dy ([\d.e+-]+)", out)  # fmt: skip
    assert dx < 1e-12 and dy < 1e-12
    pushes = _floats(r"cos ([+-][\d.]+)  push weight P_0\d = ([\d.]+)", out)
    assert [w for _, w in pushes] == sorted((w for _, w in pushes), reverse=True)
    for n, log_n, random_bound, aligned_bound in _floats(
        r"N = +(\d+) \(log N = ([\d.]+)\): random pairs: loss [\d.]+, bound ([+-][\d.]+); "
        r"aligned, noise 0.3: loss [\d.]+, bound ([+-][\d.]+)", out):  # fmt: skip
        assert log_n == pytest.approx(math.log(n), abs=1e-3)
        assert random_bound < aligned_bound <= log_n


def test_ch6_fusion_comparison(capsys):
    out = _run("ch6_fusion_comparison", capsys, "--kinds", "llava,flamingo")
    table = out.replace(",", "")  # thousands separators
    rows = _floats(r"\| (?:llava|flamingo) \| (\d+) \| (\d+) \| ([\d.]+) \| [\d.]+ \| ([\d.]+) \|",
                   table)  # fmt: skip
    assert len(rows) == 2
    for trainable, total, gflops, accuracy in rows:
        assert 0 < trainable < total and gflops > 0 and 0 <= accuracy <= 1


def test_ch7_metrics_hand_equals_library(capsys):
    out = _run("ch7_metrics", capsys)
    pairs = _floats(r"by hand ([\d.]+) +vlkit ([\d.]+)", out)
    assert len(pairs) == 14  # BLEU 4, CIDEr 4, VQA 3, Recall@K 3
    for hand, library in pairs:
        assert hand == pytest.approx(library, abs=1e-4)


def test_ch8_memory_compute(capsys):
    out = _run("ch8_memory_compute", capsys)
    (off, on, grad_diff), = _floats(r"([\d.]+) MiB without, ([\d.]+) MiB with checkpointing: "
                                    r"\d+% less; gradients max \|diff\| ([\d.e+-]+)", out)  # fmt: skip
    assert on < 0.5 * off and grad_diff < 1e-6
    ((cache, naive),) = _floats(r"GradCache ([\d.e+-]+), naive accumulation ([\d.e+-]+)", out)
    assert cache < 1e-5 and naive > 1e-3
    (ratio,) = _floats(r"int8 \(([\d.]+)x\)", out)[0]
    assert ratio == pytest.approx(4.0, abs=0.1)
    ((image_cos, text_cos),) = _floats(r"min cosine images ([\d.]+), texts ([\d.]+)", out)
    assert image_cos > 0.99 and text_cos > 0.99
