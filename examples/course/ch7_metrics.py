"""Chapter 7: evaluation metrics on small worked examples, by hand and by the library.

    .venv/bin/python examples/course/ch7_metrics.py [--quick]

Each metric is computed twice: from the formula on a case small enough to do on paper (the
arithmetic is in the comments), and by vlkit's implementation, which equals the reference code
(pycocoevalcap for BLEU and CIDEr, the official VQAv2 evaluation, open_clip's retrieval ranks).

* BLEU (Papineni et al. 2002): clipped n-gram precisions p_n, their geometric mean, times the
  brevity penalty BP = min(1, exp(1 - r / c)).
* CIDEr (Vedantam et al. 2015): TF-IDF n-gram vectors, the cosine of candidate and reference,
  averaged over n = 1..4, times 10; CIDEr-D (pycocoevalcap's `Cider`) also clips the candidate's
  counts and multiplies by a Gaussian penalty on the length difference.
* VQA accuracy (Antol et al. 2015): min(1, #humans who gave the answer / 3), averaged over the ten
  leave-one-annotator-out subsets.
* Recall@K: the fraction of queries whose match is among the K best-scored candidates.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from vlkit.evaluation import caption_scores, retrieval_metrics, vqa_accuracy


def show(name: str, hand: float, library: float) -> None:
    print(f"  {name:<34} by hand {hand:.4f}   vlkit {library:.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="(the same: it takes a second)")
    parser.parse_args(argv)

    # BLEU. Candidate "the cat sat on the mat" (6 words); references "the cat is on the mat" (6)
    # and "there is a cat on the mat" (7). Clipped matches: 1-grams the x2 (ref 1 has two), cat,
    # on, mat = 5/6; 2-grams "the cat", "on the", "the mat" = 3/5; 3-grams "on the mat" = 1/4;
    # 4-grams 0/3. The closest reference length is 6 = c, so BP = 1.
    print("BLEU, candidate 'the cat sat on the mat':")
    refs = {"img": ["the cat is on the mat", "there is a cat on the mat"]}
    bleu = caption_scores(refs, {"img": "the cat sat on the mat"}, ["bleu"], tokenizer=None)
    precisions = [5 / 6, 3 / 5, 1 / 4]
    for n in (1, 2, 3):
        hand = math.prod(precisions[:n]) ** (1 / n)
        show(f"BLEU-{n} = (p1...p{n})^(1/{n})", hand, bleu[f"bleu_{n}"])
    # No 4-gram matches: BLEU-4 is 0 in the formula; pycocoevalcap adds tiny = 1e-15 to each
    # match count (and small = 1e-9 to each total) so the log never sees 0: (1e-15 / 3)^(1/4).
    p4 = (0 + 1e-15) / (3 + 1e-9)
    show("BLEU-4, 0 matches (+1e-15 smoothing)", math.prod(precisions) ** 0.25 * p4**0.25,
         bleu["bleu_4"])  # fmt: skip

    # CIDEr over two images, so idf = log(2) - log(df) = log 2 for n-grams found in one image's
    # references. Image A: candidate "a b" = reference "a b": cosine 1 for n = 1 and 2, no 3- or
    # 4-grams: 10 * (1 + 1 + 0 + 0) / 4 = 5. Image B: candidate "c", reference "c d": unigram
    # cosine log2^2 / (log2 * sqrt(2) log2) = 1/sqrt 2: 10 / (4 sqrt 2) = 1.7678. CIDEr-D: B's
    # lengths (pycocoevalcap counts bigrams) differ by one: times exp(-1 / (2 * 6^2)).
    print("\nCIDEr, image A 'a b' vs ['a b'], image B 'c' vs ['c d']:")
    refs = {"A": ["a b"], "B": ["c d"]}
    cider = caption_scores(refs, {"A": "a b", "B": "c"}, ["cider_plain", "cider_d"],
                           tokenizer=None, per_item=True)  # fmt: skip
    b = 10 / (4 * math.sqrt(2))
    show("CIDEr, image A", 5.0, cider["per_item"]["A"]["cider_plain"])
    show("CIDEr, image B = 10 / (4 sqrt 2)", b, cider["per_item"]["B"]["cider_plain"])
    show("CIDEr, corpus (mean)", (5 + b) / 2, cider["cider_plain"])
    show(
        "CIDEr-D, image B (length penalty)",
        b * math.exp(-1 / 72),
        cider["per_item"]["B"]["cider_d"],
    )

    # VQA accuracy. Humans: "2" x3, "3" x7. Predicting "two" (normalised to "2"): leaving out one
    # of the three "2" annotators leaves 2 matches (2/3), leaving out a "3" one leaves 3 (1):
    # (3 * 2/3 + 7 * 1) / 10 = 0.9. Predicting "3": at least 6 matches in every subset: 1.
    print("\nVQA accuracy, human answers ['2'] * 3 + ['3'] * 7:")
    answers = ["2"] * 3 + ["3"] * 7
    show("prediction 'two' -> '2'", 0.9, vqa_accuracy("two", answers))
    show("prediction '3'", 1.0, vqa_accuracy("3", answers))
    show("prediction '1'", 0.0, vqa_accuracy("1", answers))

    # Recall@K. Scores image i x caption j (caption j describes image j):
    #   image 0: 0.9 0.3 0.2 -> its caption first            (rank 1)
    #   image 1: 0.8 0.7 0.1 -> caption 0 beats its own      (rank 2)
    #   image 2: 0.1 0.2 0.6 -> first                        (rank 1)
    # image -> text R@1 = 2/3, R@2 = 1. Text -> image: column j, caption j's own image is the
    # best in every column (0.9 > 0.8; 0.7 > 0.3; 0.6 > 0.2): R@1 = 1.
    print("\nRecall@K, 3 images x 3 captions:")
    scores = torch.tensor([[0.9, 0.3, 0.2], [0.8, 0.7, 0.1], [0.1, 0.2, 0.6]])
    # Image embeddings = the identity, text embeddings = the columns: dot products = `scores`.
    recall = retrieval_metrics(torch.eye(3), scores.T, [0, 1, 2], ks=(1, 2))
    show("image -> text R@1", 2 / 3, recall["i2t_r1"])
    show("image -> text R@2", 1.0, recall["i2t_r2"])
    show("text -> image R@1", 1.0, recall["t2i_r1"])


if __name__ == "__main__":
    main(sys.argv[1:])
