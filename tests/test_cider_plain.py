"""Plain CIDEr (the paper's formula) next to CIDEr-D, against the reference code.

The reference for plain CIDEr is the original CIDEr repository's scorer (vrama91/cider,
``pyciderevalcap/cider/cider_scorer.py``, df_mode="corpus"). It is pycocoevalcap's ``CiderScorer``
(which computes CIDEr-D) without CIDEr-D's two additions, so the oracle here is pycocoevalcap's own
scorer with both switched off: sigma = inf makes the length penalty exp(-delta^2 / inf) = 1, and the
module's ``min`` in the clipped product ``min(hyp, ref) * ref`` is replaced by "take hyp".
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from vlkit.cli import main
from vlkit.evaluation.caption_metrics import caption_scores
from vlkit.evaluation.caption_metrics.bleu import NgramCorpus
from vlkit.evaluation.caption_metrics.cider import cider_d_scores, cider_scores

pytest.importorskip("pycocoevalcap")
from pycocoevalcap.cider import cider_scorer  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402

TOL = 1e-9


def plain_cider_reference(refs: dict, cands: dict) -> tuple[float, np.ndarray]:
    """pycocoevalcap's Cider with the clipping and the length penalty undone (see docstring)."""
    gts = {i: list(r) for i, r in refs.items()}
    res = {i: [cands[i]] for i in refs}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cider_scorer, "min", lambda hyp, ref: hyp, raising=False)
        return Cider(sigma=math.inf).compute_score(gts, res)


def _corpus(n_images: int, seed: int, vocab_size: int) -> tuple[dict, dict]:
    """Seeded tokenized captions with pycocoevalcap's corner cases: several references, repeated
    words (where clipping matters), one-word and empty candidates, lengths far apart (where the
    penalty matters) and n-grams in every image's references (idf 0)."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(vocab_size)]

    def sentence(lo: int, hi: int) -> list[str]:
        return [rng.choice(vocab) for _ in range(rng.randint(lo, hi))]

    refs, cands = {}, {}
    for i in range(n_images):
        rs = [["a", "photo", "of", *sentence(1, 12)] for _ in range(rng.randint(1, 5))]
        kind = rng.random()
        if kind < 0.15:
            c = list(rng.choice(rs))  # identical to a reference
        elif kind < 0.3:
            c = [rng.choice(vocab)] * rng.randint(2, 7)  # one word repeated: clipped in CIDEr-D
        elif kind < 0.4:
            c = [rng.choice(vocab)]  # one word
        elif kind < 0.45:
            c = []  # empty candidate
        elif kind < 0.6:
            c = rng.choice(rs) * 3  # every n-gram of a reference, three times, much longer
        else:
            c = ["a", "photo", "of", *sentence(1, 14)]
        refs[i] = [" ".join(r) for r in rs]
        cands[i] = " ".join(c)
    return refs, cands


@pytest.mark.parametrize("seed,vocab_size", [(0, 6), (1, 30), (2, 300)])
def test_plain_cider_equals_the_reference(seed, vocab_size):
    refs, cands = _corpus(150, seed, vocab_size)
    want, want_items = plain_cider_reference(refs, cands)
    got = caption_scores(refs, cands, ["cider_plain"], tokenizer=None, per_item=True)
    assert list(got) == ["cider_plain", "per_item"]
    assert abs(got["cider_plain"] - want) <= TOL
    items = np.array([got["per_item"][i]["cider_plain"] for i in refs])
    assert np.max(np.abs(items - want_items)) <= TOL
    # CIDEr-D (pycocoevalcap's unmodified Cider) is never above plain CIDEr, and differs here.
    d_score, d_items = Cider().compute_score(
        {i: list(r) for i, r in refs.items()}, {i: [cands[i]] for i in refs}
    )
    assert np.all(d_items <= items + TOL) and d_score < got["cider_plain"] - 1e-3


def test_plain_cider_hand_computed():
    # Two images, so idf = log 2 - log df = log 2 for every n-gram (each is in one image's refs).
    # Image A: candidate "a b" = reference "a b": cosine 1 for n = 1, 2; 0 for n = 3, 4 (no such
    # n-grams): 10 * (1 + 1) / 4 = 5. Image B: candidate "c" vs reference "c d": unigram cosine
    # log2^2 / (log2 * sqrt(2) log2) = 1/sqrt(2), nothing else: 10 / (4 sqrt(2)).
    refs = {"A": ["a b"], "B": ["c d"]}
    cands = {"A": "a b", "B": "c"}
    corpus = NgramCorpus([c.split() for c in cands.values()], [[r.split() for r in v] for v in
                                                                  refs.values()])  # fmt: skip
    score, items = cider_scores(corpus)
    b = 10 / (4 * math.sqrt(2))
    np.testing.assert_allclose(items, [5.0, b], atol=1e-12)
    assert score == pytest.approx((5.0 + b) / 2, abs=1e-12)
    # CIDEr-D: B's lengths (counted in bigrams) differ by 1: penalty exp(-1 / (2 * 6^2)).
    _, d_items = cider_d_scores(corpus)
    np.testing.assert_allclose(d_items, [5.0, b * math.exp(-1 / 72)], atol=1e-12)


def test_eval_captions_reports_plain_cider_next_to_cider_d(tmp_path, capsys):
    refs = {1: ["a red square on a white background", "a red block"],
            2: ["two green circles", "green circles on grey"], 3: ["a blue triangle"]}  # fmt: skip
    cands = {1: "a red red square", 2: "green circles", 3: "a yellow star ."}
    references = {
        "images": [{"id": i, "file_name": f"{i}.png"} for i in refs],
        "annotations": [{"id": 10 * i + k, "image_id": i, "caption": c}
                        for i, caps in refs.items() for k, c in enumerate(caps)],
    }  # fmt: skip
    (tmp_path / "refs.json").write_text(json.dumps(references))
    results = [{"image_id": i, "caption": c} for i, c in cands.items()]
    (tmp_path / "res.json").write_text(json.dumps(results))
    argv = ["eval", "captions", "--references", str(tmp_path / "refs.json"), "--results",
            str(tmp_path / "res.json"), "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    want = caption_scores(refs, cands, ["cider_d", "cider_plain"])
    assert printed["cider_plain"] == pytest.approx(want["cider_plain"], abs=1e-12)
    assert printed["cider_d"] == pytest.approx(want["cider_d"], abs=1e-12)
    assert printed["cider_plain"] > printed["cider_d"]
    assert "| cider_plain |" in (tmp_path / "out" / "report.md").read_text()
