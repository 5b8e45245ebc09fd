"""Captioning metrics: vlkit vs pycocoevalcap (BLEU-1..4, ROUGE-L, CIDEr-D, PTB tokenization).

Generates a seeded synthetic corpus (``--images`` images with ``--refs`` references each and one
candidate, about 10 words per caption, a Zipf-distributed vocabulary of ``--vocab`` words, with
capitals, punctuation, possessives, contractions and numbers in the raw text), then in one run:

1. scores the *same pre-tokenized* captions with pycocoevalcap's ``Bleu(4)``, ``Rouge()`` and
   ``Cider()`` and with vlkit (each metric on its own, including vlkit's n-gram encoding, and all
   three together through ``caption_scores(tokenizer=None)``), checks that the values are
   identical (max abs difference over corpus and per-image scores) and prints seconds and
   speed-ups;
2. times PTB tokenization of the raw captions: pycocoevalcap's Java ``PTBTokenizer`` vs vlkit's
   Python one (cold, i.e. with empty caches, and warm), and counts captions whose tokens differ;
3. prints the end-to-end time (tokenization + the three metrics) of both.

    .venv/bin/python benchmarks/caption_metrics.py                 # 5,000 x 5 (about a minute)
    .venv/bin/python benchmarks/caption_metrics.py --images 1000 --no-java

Exit status 1 if any score differs by more than 1e-9.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from vlkit.evaluation.caption_metrics import caption_scores, java_available  # noqa: E402
from vlkit.evaluation.caption_metrics import ptb_tokenizer as ptb  # noqa: E402
from vlkit.evaluation.caption_metrics.bleu import NgramCorpus, bleu_scores  # noqa: E402
from vlkit.evaluation.caption_metrics.cider import cider_d_scores  # noqa: E402
from vlkit.evaluation.caption_metrics.rouge import rouge_l_scores  # noqa: E402


def _words(text: str) -> list[str]:
    return text.split()


CORE = _words(
    "man woman person people boy girl child dog cat horse bird elephant giraffe zebra cow sheep "
    "bear car bus train truck bike motorcycle boat plane table chair couch bed kitchen bathroom "
    "street road sidewalk field grass beach water snow sky tree building pizza sandwich cake "
    "plate bowl cup phone laptop tv clock sign umbrella kite frisbee ball bat racket skateboard "
    "surfboard skis wave room window door wall floor shirt hat jacket"
)
ADJ = _words("red blue green white black brown small large young old wooden tall yellow orange")
VERB = _words(
    "sitting standing walking riding holding eating playing looking lying flying parked "
    "waiting carrying throwing catching wearing"
)
PREP = ["on", "in", "near", "next to", "with", "under", "at", "behind", "in front of", "over"]
DET = ["a", "the", "two", "three", "an", "some", "a", "a"]
SYLL = _words(
    "ba be bi bo bu ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu ra re ri ro ru"
)


def make_vocab(size: int, rng: random.Random) -> list[str]:
    words = list(dict.fromkeys(CORE + ADJ + VERB))
    while len(words) < size:
        w = "".join(rng.choice(SYLL) for _ in range(rng.randint(2, 4)))
        if w not in words:
            words.append(w)
    return words[:size]


def make_caption(rng: random.Random, vocab: list[str], weights: np.ndarray) -> tuple[str, str]:
    """(raw caption, its pre-tokenized form), about 10 words."""
    nouns = rng.choices(vocab, weights=weights, k=3)
    toks = [rng.choice(DET)]
    if rng.random() < 0.5:
        toks.append(rng.choice(ADJ))
    toks += [nouns[0], "is", rng.choice(VERB), *rng.choice(PREP).split(), "the", nouns[1]]
    if rng.random() < 0.4:
        toks += ["with", rng.choice(DET), nouns[2]]
    raw_toks = list(toks)
    r = rng.random()
    if r < 0.1:  # possessive
        raw_toks[-1] += "'s"
        toks[-1:] = [toks[-1], "'s"]
        raw_toks.append("toy")
        toks.append("toy")
    elif r < 0.15:  # contraction
        i = toks.index("is")
        raw_toks[i - 1 : i + 1] = [raw_toks[i - 1] + "'s"]
        toks[i] = "'s"
    elif r < 0.2:  # number
        raw_toks.insert(1, str(rng.randint(2, 12)))
        toks.insert(1, raw_toks[1])
    if rng.random() < 0.15:  # a comma clause
        raw_toks[2] += ","
    raw = " ".join(raw_toks)
    raw = raw[0].upper() + raw[1:] + rng.choice([".", ".", ".", "", " .", "!"])
    return raw, " ".join(toks)


def make_corpus(n_images: int, n_refs: int, vocab_size: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    vocab = make_vocab(vocab_size, rng)
    weights = 1.0 / np.arange(1, len(vocab) + 1)  # Zipf
    raw_refs, tok_refs, raw_cands, tok_cands = {}, {}, {}, {}
    for i in range(n_images):
        pairs = [make_caption(rng, vocab, weights) for _ in range(n_refs + 1)]
        raw_refs[i] = [p[0] for p in pairs[:n_refs]]
        tok_refs[i] = [p[1] for p in pairs[:n_refs]]
        raw_cands[i], tok_cands[i] = pairs[n_refs]
    return {
        "raw_refs": raw_refs,
        "tok_refs": tok_refs,
        "raw_cands": raw_cands,
        "tok_cands": tok_cands,
    }


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--refs", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="vlkit timings: best of this many")
    ap.add_argument("--ref-repeats", type=int, default=1, help="pycocoevalcap timings")
    ap.add_argument("--no-java", action="store_true", help="skip the Java PTB tokenizer")
    args = ap.parse_args()

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    data = make_corpus(args.images, args.refs, args.vocab, args.seed)
    gts = {i: list(r) for i, r in data["tok_refs"].items()}
    res = {i: [c] for i, c in data["tok_cands"].items()}
    ids = list(gts)
    cand_tok = [res[i][0].split() for i in ids]
    ref_tok = [[r.split() for r in gts[i]] for i in ids]
    n_tok = sum(map(len, cand_tok)) + sum(len(r) for rs in ref_tok for r in rs)
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, {platform.processor() or platform.machine()}"
    )
    print(
        f"corpus: {args.images} images x {args.refs} refs + 1 candidate, {n_tok} tokens, "
        f"{len({t for rs in ref_tok for r in rs for t in r})} distinct reference words\n"
    )

    rows, diffs = [], {}
    # --- BLEU ---
    t_ref, (b_ref, bi_ref) = timed(
        lambda: Bleu(4).compute_score(gts, res, verbose=0), args.ref_repeats
    )
    t_vl, (b_vl, bi_vl) = timed(lambda: bleu_scores(NgramCorpus(cand_tok, ref_tok)), args.repeats)
    diffs["BLEU-1..4"] = max(
        max(abs(a - b) for a, b in zip(b_vl, b_ref, strict=True)),
        float(np.abs(bi_vl - np.array(bi_ref).T).max()),
    )
    rows.append(("BLEU-1..4", t_ref, t_vl))
    # --- ROUGE-L ---
    t_ref, (r_ref, ri_ref) = timed(lambda: Rouge().compute_score(gts, res), args.ref_repeats)
    t_vl, (r_vl, ri_vl) = timed(
        lambda: rouge_l_scores(NgramCorpus(cand_tok, ref_tok)), args.repeats
    )
    diffs["ROUGE-L"] = max(abs(r_vl - r_ref), float(np.abs(ri_vl - ri_ref).max()))
    rows.append(("ROUGE-L", t_ref, t_vl))
    # --- CIDEr-D ---
    t_ref, (c_ref, ci_ref) = timed(lambda: Cider().compute_score(gts, res), args.ref_repeats)
    t_vl, (c_vl, ci_vl) = timed(
        lambda: cider_d_scores(NgramCorpus(cand_tok, ref_tok)), args.repeats
    )
    diffs["CIDEr-D"] = max(abs(c_vl - c_ref), float(np.abs(ci_vl - ci_ref).max()))
    rows.append(("CIDEr-D", t_ref, t_vl))
    # --- all three through the public API (one shared n-gram encoding) ---
    t_all, together = timed(
        lambda: caption_scores(data["tok_refs"], data["tok_cands"], tokenizer=None, per_item=True),
        args.repeats,
    )
    ref_all = sum(r[1] for r in rows)
    expected = {f"bleu_{k + 1}": b_ref[k] for k in range(4)} | {"rouge_l": r_ref, "cider_d": c_ref}
    diffs["caption_scores"] = max(abs(together[k] - v) for k, v in expected.items())
    rows.append(("all three (caption_scores)", ref_all, t_all))

    print(
        "Metrics on the same pre-tokenized captions (seconds; vlkit = best of "
        f"{args.repeats}, pycocoevalcap = best of {args.ref_repeats}):"
    )
    print(
        f"{'metric':28s} {'pycocoevalcap':>14s} {'vlkit':>9s} {'speed-up':>9s} {'max |diff|':>11s}"
    )
    for (name, tr, tv), d in zip(rows, diffs.values(), strict=True):
        print(f"{name:28s} {tr:14.3f} {tv:9.3f} {tr / tv:8.1f}x {d:11.1e}")

    # --- tokenization ---
    raw_refs, raw_cands = data["raw_refs"], data["raw_cands"]
    flat = [c for i in ids for c in raw_refs[i]]
    cands = [raw_cands[i] for i in ids]

    def vlkit_tok() -> tuple[list[list[str]], list[list[str]]]:
        return ptb.ptb_tokens_batch(flat), ptb.ptb_tokens_batch(cands)

    ptb.clear_cache()
    t_cold, (py_refs, py_cands) = timed(vlkit_tok, 1)
    t_warm, _ = timed(vlkit_tok, args.repeats)
    print(f"\nPTB tokenization of {len(flat) + len(cands)} raw captions (seconds):")
    print(f"{'tokenizer':40s} {'seconds':>9s}")
    print(f"{'vlkit Python PTB, cold (empty caches)':40s} {t_cold:9.3f}")
    print(f"{'vlkit Python PTB, warm':40s} {t_warm:9.3f}")
    t_java = None
    if not args.no_java and java_available():
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        def java_tok() -> tuple[dict, dict]:
            # What pycocoevalcap's COCOEvalCap does: one Java run for gts, one for res.
            tok = PTBTokenizer()
            g = tok.tokenize({i: [{"caption": c} for c in raw_refs[i]] for i in ids})
            r = tok.tokenize({i: [{"caption": raw_cands[i]}] for i in ids})
            return g, r

        devnull = os.open(os.devnull, os.O_WRONLY)
        saved = os.dup(2)
        os.dup2(devnull, 2)  # the Java tokenizer prints its progress on stderr
        try:
            t_java, (g, r) = timed(java_tok, 1)
        finally:
            os.dup2(saved, 2)
            os.close(devnull)
        java_refs = [t.split() for i in ids for t in g[i]]
        java_cands = [r[i][0].split() for i in ids]
        differ = sum(
            a != b for a, b in zip(py_refs + py_cands, java_refs + java_cands, strict=True)
        )
        print(f"{'pycocoevalcap Java PTBTokenizer':40s} {t_java:9.3f}")
        print(f"captions tokenized differently by the two: {differ} of {len(flat) + len(cands)}")
        print(f"speed-up (Java / Python cold): {t_java / t_cold:.1f}x")
        print("\nEnd to end (tokenize raw captions + BLEU + ROUGE-L + CIDEr-D, seconds):")
        e2e_vl, _ = timed(lambda: caption_scores(raw_refs, raw_cands, tokenizer="ptb"), 1)
        print(
            f"  pycocoevalcap {t_java + ref_all:.3f}   vlkit (warm caches) {e2e_vl:.3f}   "
            f"vlkit (cold tokenizer) {t_cold + t_all:.3f}   "
            f"speed-up {(t_java + ref_all) / (t_cold + t_all):.1f}x (cold)"
        )

    worst = max(diffs.values())
    print(f"\nmax |diff| vs pycocoevalcap over all scores: {worst:.1e}")
    return 0 if worst <= 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
