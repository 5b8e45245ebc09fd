"""Bias audit: the skew metrics against values computed by hand from Geyik et al. 2019's
definitions, Wilson intervals against scipy, the debiasing projection's algebra (Chuang et al.
2023), and `vlkit audit` end to end on a tiny random CLIP."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vlkit.cli import main
from vlkit.evaluation import bias_metrics as bm
from vlkit.evaluation.debiasing import (
    bias_directions,
    bias_projection,
    calibrated_projection,
    debias_text_embeddings,
    parse_prompt_pairs,
)
from vlkit.recipes.bias_audit import AuditConfig, audit_similarities

# A ranking of six items, best first by score: groups a a b a b b.
SCORES = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
GROUPS = ["a", "a", "b", "a", "b", "b"]
HALF = {"a": 0.5, "b": 0.5}


def test_skew_at_k_by_hand():
    # top 2 = a, a: p(a) = 1, p(b) = 0 -> Skew_a = ln(1 / 0.5), Skew_b = -inf.
    assert bm.skew_at_k(SCORES, GROUPS, 2, HALF) == {"a": math.log(2), "b": -math.inf}
    # top 4 = a, a, b, a: p(a) = 3/4, p(b) = 1/4.
    skews = bm.skew_at_k(SCORES, GROUPS, 4, HALF)
    assert skews["a"] == pytest.approx(math.log(1.5)) and skews["b"] == pytest.approx(math.log(0.5))
    assert bm.max_skew_at_k(SCORES, GROUPS, 4, HALF) == pytest.approx(0.405465108)
    assert bm.min_skew_at_k(SCORES, GROUPS, 4, HALF) == pytest.approx(-0.693147181)
    # The whole list matches the desired distribution: no skew.
    assert bm.max_skew_at_k(SCORES, GROUPS, 6, HALF) == pytest.approx(0.0)
    # The ranking follows the scores, not the input order.
    shuffled = [5, 2, 0, 4, 1, 3]
    scores, groups = [SCORES[i] for i in shuffled], [GROUPS[i] for i in shuffled]
    assert bm.skew_at_k(scores, groups, 4, HALF) == skews
    # A non-uniform desired distribution: p_q(a) = 0.25 -> Skew_a@4 = ln(0.75 / 0.25).
    assert bm.skew_at_k(SCORES, GROUPS, 4, {"a": 0.25, "b": 0.75})["a"] == pytest.approx(
        math.log(3)
    )
    with pytest.raises(ValueError, match="k=7"):
        bm.skew_at_k(SCORES, GROUPS, 7, HALF)


def test_ndkl_by_hand():
    # Prefix shares of group a: 1, 1, 2/3, 3/4, 3/5, 1/2; KL to (1/2, 1/2) of a share p is
    # p ln 2p + (1-p) ln 2(1-p); weights 1 / log2(i + 1), i = 1..6 -> 0.370057945527557.
    assert bm.ndkl(SCORES, GROUPS, HALF) == pytest.approx(0.37005794552755694, rel=1e-12)
    # Alternating groups: every even prefix is balanced, odd prefixes slightly off.
    alternating = bm.ndkl(SCORES, ["a", "b"] * 3, HALF)
    assert 0 < alternating < bm.ndkl(SCORES, GROUPS, HALF)
    # All of one group first is the worst order of these six items.
    assert bm.ndkl(SCORES, ["a"] * 3 + ["b"] * 3, HALF) > bm.ndkl(SCORES, GROUPS, HALF)


def test_wilson_interval_equals_scipy():
    # Reference values from scipy.stats.binomtest(s, n).proportion_ci(level, method="wilson")
    # (scipy 1.17), written out so the test does not import scipy.
    reference = {
        (0, 10, 0.95): (0.0, 0.27753279986288926),
        (3, 10, 0.95): (0.10779126740630102, 0.6032218525388546),
        (10, 10, 0.9): (0.787058029916593, 1.0),
        (47, 200, 0.99): (0.1670573575335323, 0.3199605579124295),
    }
    for (successes, trials, level), interval in reference.items():
        assert bm.wilson_interval(successes, trials, level) == pytest.approx(interval, abs=1e-12)
    assert bm.wilson_interval(0, 0) == (0.0, 1.0)


def test_association_rates_and_bootstrap():
    rates = bm.association_rates([0, 0, 1, 1, 0], ["a", "a", "a", "b", "b"], 2, ["a", "b"])
    assert [r["rate"] for r in rates["a"]] == pytest.approx([2 / 3, 1 / 3])
    assert [r["count"] for r in rates["b"]] == [1, 1]
    assert rates["a"][0]["low"] < 2 / 3 < rates["a"][0]["high"]
    low, high = bm.bootstrap_interval(lambda i: float(np.mean(np.asarray(SCORES)[i])), 6, 300)
    assert low < np.mean(SCORES) < high
    assert bm.bootstrap_interval(lambda i: float(i.mean()), 6, 50, seed=3) == (
        bm.bootstrap_interval(lambda i: float(i.mean()), 6, 50, seed=3)
    )


def test_projection_removes_the_bias_direction_and_is_idempotent():
    torch.manual_seed(0)
    first, second = torch.randn(3, 16), torch.randn(3, 16)
    projection = bias_projection(first, second)
    assert torch.allclose(projection @ projection, projection, atol=1e-5)  # idempotent
    assert torch.allclose(projection, projection.T, atol=1e-6)  # orthogonal projection
    texts = debias_text_embeddings(torch.randn(5, 16), projection)
    assert torch.allclose(texts @ (first - second).T, torch.zeros(5, 3), atol=1e-5)
    assert torch.allclose(texts.norm(dim=-1), torch.ones(5))
    # Projecting again changes nothing.
    assert torch.allclose(debias_text_embeddings(texts, projection), texts, atol=1e-5)
    # Dependent pairs add no direction: the rank is that of the differences.
    doubled = bias_directions(torch.cat([first, first]), torch.cat([second, second]))
    assert doubled.shape == (16, 3)


def test_calibrated_projection_equalizes_the_pairs():
    torch.manual_seed(1)
    first, second = torch.randn(2, 12, dtype=torch.float64), torch.randn(2, 12, dtype=torch.float64)
    z_i, z_j = torch.randn(4, 12, dtype=torch.float64), torch.randn(4, 12, dtype=torch.float64)
    plain = bias_projection(first, second)
    assert torch.allclose(calibrated_projection(first, second, (z_i, z_j), 0.0), plain)
    before = (plain @ (z_i - z_j).T).norm()
    calibrated = calibrated_projection(first, second, (z_i, z_j), strength=1000.0)
    after = (calibrated @ (z_i - z_j).T).norm()
    assert after < 0.01 * before  # the pairs map (almost) to the same point
    with pytest.raises(ValueError, match="lambda"):
        calibrated_projection(first, second, (z_i, z_j), strength=-1)


def test_prompt_pairs_parsing():
    assert parse_prompt_pairs("a man|a woman; a boy | a girl") == [
        ("a man", "a woman"),
        ("a boy", "a girl"),
    ]
    with pytest.raises(ValueError, match="two prompts"):
        parse_prompt_pairs("a man|a woman|a person")


def test_audit_of_planted_similarities():
    # Prompt 0 prefers group a; prompt 1 is indifferent. 4 images per group.
    groups = ["a"] * 4 + ["b"] * 4
    similarity = torch.tensor([[0.9, 0.1]] * 4 + [[0.2, 0.5]] * 4)
    similarity[:, 1] = torch.tensor([0.5, 0.1, 0.4, 0.2, 0.45, 0.3, 0.35, 0.25])
    config = AuditConfig(prompts=("p0", "p1"), attribute="g", ks=(2, 4), bootstrap=50)
    result = audit_similarities(similarity, groups, config)
    p0 = result["prompts"]["p0"]
    assert p0["association"]["a"]["rate"] == 1.0 and p0["association"]["b"]["rate"] == 0.0
    assert p0["association_gap"] == 1.0
    # Top 4 of prompt 0 are all group a: MaxSkew@4 = ln(1 / 0.5), MinSkew@4 = -inf.
    assert p0["ranking"]["at_4"]["max_skew"] == pytest.approx(math.log(2))
    assert p0["ranking"]["at_4"]["min_skew"] == -math.inf
    # Prompt 1 ranks a b a b a b a b: balanced at k = 2 and 4.
    assert result["prompts"]["p1"]["ranking"]["at_4"]["max_skew"] == pytest.approx(0.0)
    assert result["groups"] == {"a": 4, "b": 4} and result["ks"] == [2, 4]


@pytest.fixture(scope="module")
def labelled_images(tmp_path_factory):
    """Solid red and blue images with a `colour` attribute column, one row without a group."""
    root = tmp_path_factory.mktemp("audit_data")
    rows = []
    for i in range(12):
        colour = "red" if i % 2 else "blue"
        value = (200, 20 + 5 * i, 20) if colour == "red" else (20, 20 + 5 * i, 200)
        Image.new("RGB", (32, 32), value).save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "colour": colour})
    rows.append({"image": "12.png", "colour": ""})  # no group: left out
    with open(root / "data.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, ["image", "colour"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_vlkit_audit_writes_the_report(checkpoint, labelled_images, tmp_path, capsys):
    out = tmp_path / "audit"
    argv = ["audit", "--model", str(checkpoint), "--data", str(labelled_images / "data.csv"),
            "--attribute", "colour", "--prompts", "a red thing,a blue thing", "--out", str(out),
            "--k", "4,100", "--bootstrap", "20",
            "--debias", "a photo of red|a photo of blue"]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["groups"] == {"blue": 6, "red": 6} and printed["skipped"] == 1
    audit = json.loads((out / "audit.json").read_text())
    for part in ("original", "debiased"):
        prompts = audit[part]["prompts"]
        for group in ("red", "blue"):  # every image has exactly one top prompt
            total = sum(prompts[p]["association"][group]["rate"] for p in prompts)
            assert total == pytest.approx(1.0)
        assert audit[part]["ks"] == [4]  # 100 > 12 images: left out
    assert "Debiased prompts" in (out / "report.md").read_text()
    assert (out / "association_rates.png").stat().st_size > 0
    # A second audit into the same directory is refused, one line, exit 2.
    assert main(argv) == 2
    assert "already holds an audit" in capsys.readouterr().err
    bad = [*argv[:5], "--attribute", "gender", *argv[7:], "--overwrite"]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "no column 'gender'" in err and "Traceback" not in err
    assert main([*argv[:-2], "--debias", "only one side", "--overwrite"]) == 2
    assert "--debias" in capsys.readouterr().err
    assert main([*argv[:-2], "--equalize", "a red thing|a blue thing", "--overwrite"]) == 2
    assert "--equalize needs --debias" in capsys.readouterr().err
    # --equalize switches to the calibrated projection (Chuang et al. §3.2).
    assert main([*argv, "--equalize", "a red thing|a blue thing", "--overwrite"]) == 0
    assert "calibrated projection" in (out / "report.md").read_text()
