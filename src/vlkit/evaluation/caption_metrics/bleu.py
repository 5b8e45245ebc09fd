"""BLEU-1..4 exactly as pycocoevalcap computes it (Papineni et al. 2002), vectorised with numpy.

Also home of :class:`NgramCorpus`, the integer n-gram encoding shared by BLEU, ROUGE-L and CIDEr-D.

pycocoevalcap (``bleu/bleu_scorer.py``) builds a dict of n-gram tuples per sentence and loops over
them in Python. Here every token is mapped to an integer once, and the n-grams of order k are
(id of the (k-1)-gram prefix, last token) pairs packed into one int64 with their sentence index:
a single sort per order gives each n-gram a dense id and the per-sentence counts. Clipped counts,
reference lengths and the BLEU formula are then array operations.

The reproduced details of ``BleuScorer.compute_score(option="closest")``:

- precision of order k: ``(correct_k + 1e-15) / (guess_k + 1e-9)`` ("tiny" and "small"), where
  ``correct_k`` counts candidate n-grams clipped by their maximum count in any one reference and
  ``guess_k = max(0, len(candidate) - k + 1)``; BLEU-k is the geometric mean of orders 1..k,
  computed as a running product raised to ``1 / k``;
- effective reference length: the reference length closest to the candidate length, ties going to
  the shorter reference;
- brevity penalty ``exp(1 - 1 / ratio)`` with ``ratio = (c + 1e-15) / (r + 1e-9)``, applied only
  when ``ratio < 1``;
- the corpus score pools ``correct``, ``guess``, ``c`` and ``r`` over all images before applying
  the formula (it is not the mean of the per-image scores); the per-image scores use the same
  formula on one image's counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# bleu_scorer.py: `small = 1e-9`, `tiny = 1e-15` keep the ratios finite and make a zero count
# give a (near) zero score instead of a division by zero.
_SMALL = 1e-9
_TINY = 1e-15


class NgramCorpus:
    """Integer-encoded candidates and references with per-order n-gram counts.

    Sentence ``i < n_images`` is the candidate of image ``i``; the references follow, image by
    image (so the references of one image are contiguous sentences).

    Args:
        candidates: one token list per image.
        references: for each image, a non-empty list of token lists.
        max_n: highest n-gram order that will be asked for.
    """

    def __init__(
        self,
        candidates: Sequence[Sequence[str]],
        references: Sequence[Sequence[Sequence[str]]],
        max_n: int = 4,
    ) -> None:
        if len(candidates) != len(references):
            raise ValueError("candidates and references must have one entry per image")
        self.n_images = len(candidates)
        self.max_n = max_n
        lengths: list[int] = [len(c) for c in candidates]
        n_refs: list[int] = []
        flat: list[str] = [t for c in candidates for t in c]
        for refs in references:
            n_refs.append(len(refs))
            for r in refs:
                lengths.append(len(r))
                flat.extend(r)
        # dict.fromkeys dedupes at C speed; map(vocab.__getitem__) avoids a Python-level loop.
        self.vocab: dict[str, int] = {t: i for i, t in enumerate(dict.fromkeys(flat))}
        self.tokens = np.fromiter(
            map(self.vocab.__getitem__, flat), dtype=np.int64, count=len(flat)
        )
        self.sent_len = np.asarray(lengths, dtype=np.int64)
        self.sent_start = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(self.sent_len, out=self.sent_start[1:])
        self.n_refs = np.asarray(n_refs, dtype=np.int64)
        # ref_offset[i]:ref_offset[i+1] are image i's references, as indices into the sentences.
        self.ref_offset = np.zeros(self.n_images + 1, dtype=np.int64)
        np.cumsum(self.n_refs, out=self.ref_offset[1:])
        self.ref_offset += self.n_images
        self.img_of_sent = np.concatenate(
            [np.arange(self.n_images), np.repeat(np.arange(self.n_images), self.n_refs)]
        ).astype(np.int64)
        self._sent_of_tok = np.repeat(np.arange(len(lengths), dtype=np.int64), self.sent_len)
        self._orders: dict[int, dict[str, Any]] = {}

    @property
    def n_sentences(self) -> int:
        return len(self.sent_len)

    def _order(self, k: int) -> dict[str, Any]:
        """Positions, dense ids and (n-gram, sentence) counts of the k-grams, by one sort.

        The k-gram starting at a position is its (k-1)-gram prefix's dense id combined with its
        last token; sorting (that key, sentence) packed in one int64 both densifies the ids
        (rank of the key) and groups equal (n-gram, sentence) pairs, whose run lengths are the
        counts.
        """
        if k in self._orders:
            return self._orders[k]
        if not 1 <= k <= self.max_n:
            raise ValueError(f"n-gram order {k} outside 1..{self.max_n} (the corpus's max_n)")
        n_sent = max(self.n_sentences, 1)
        n_vocab = max(len(self.vocab), 1)
        if k == 1:
            pos = np.arange(len(self.tokens), dtype=np.int64)
            key, n_keys = self.tokens, n_vocab
        else:
            prev = self._order(k - 1)
            sent_end = self.sent_start[1:][self._sent_of_tok[prev["pos"]]]
            keep = prev["pos"] + (k - 1) < sent_end  # the k-gram still fits in its sentence
            pos = prev["pos"][keep]
            key = prev["gid"][keep] * n_vocab + self.tokens[pos + (k - 1)]
            n_keys = max(prev["n_ids"], 1) * n_vocab
            if n_keys * n_sent >= 2**62:  # too large to pack with the sentence: densify first
                _, key = np.unique(key, return_inverse=True)
                key = key.reshape(-1).astype(np.int64)
                n_keys = int(key.max(initial=0)) + 1
        packed = key * n_sent + self._sent_of_tok[pos]
        # Dense ids at each position are only needed to build the next order (k == 1: tokens).
        need_gid = 1 < k < self.max_n
        order = np.argsort(packed) if need_gid else None
        packed = packed[order] if order is not None else np.sort(packed)
        gram = packed // n_sent
        new_gram = np.empty(len(gram), dtype=bool)
        new_gram[:1] = True
        np.not_equal(gram[1:], gram[:-1], out=new_gram[1:])
        dense_sorted = np.cumsum(new_gram) - 1
        if k == 1:
            gid = self.tokens  # already dense, and sorting by token id keeps them in order
        elif order is not None:
            gid = np.empty_like(dense_sorted)
            gid[order] = dense_sorted
        else:
            gid = None
        new_pair = new_gram.copy()
        new_pair[1:] |= packed[1:] != packed[:-1]
        starts = np.flatnonzero(new_pair)
        result = {
            "pos": pos,
            "gid": gid,
            "n_ids": int(dense_sorted[-1]) + 1 if len(dense_sorted) else 0,
            "pair_gid": dense_sorted[starts],
            "pair_sent": packed[starts] % n_sent,
            "pair_count": np.diff(np.append(starts, len(packed))),
        }
        self._orders[k] = result
        return result

    def counts(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Distinct (k-gram, sentence) pairs, sorted by n-gram id then sentence, with counts.

        Because the references of an image are consecutive sentences, ``id * n_images + image``
        is non-decreasing along the reference entries, and ``id * n_images + sentence`` along
        the candidate entries (sentences ``< n_images``).

        Returns:
            ``(ngram_id, sentence, count, n_distinct_ngrams)``.
        """
        o = self._order(k)
        return o["pair_gid"], o["pair_sent"], o["pair_count"], o["n_ids"]


def _clipped_counts(corpus: NgramCorpus, k: int) -> np.ndarray:
    """Per image: sum over candidate k-grams of min(count, max count in any one reference)."""
    n_img = corpus.n_images
    gid, sent, cnt, _ = corpus.counts(k)
    is_cand = sent < n_img
    is_ref = ~is_cand
    # Max count per (n-gram, image) over the image's references: the keys are non-decreasing
    # (see NgramCorpus.counts), so each key is one run.
    ref_key = gid[is_ref] * n_img + corpus.img_of_sent[sent[is_ref]]
    if len(ref_key) == 0:
        return np.zeros(n_img, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, ref_key[1:] != ref_key[:-1]])
    uniq, max_count = ref_key[starts], np.maximum.reduceat(cnt[is_ref], starts)
    cand_sent = sent[is_cand]
    cand_key = gid[is_cand] * n_img + cand_sent
    idx = np.minimum(np.searchsorted(uniq, cand_key), len(uniq) - 1)
    ref_max = np.where(uniq[idx] == cand_key, max_count[idx], 0)
    clipped = np.minimum(cnt[is_cand], ref_max)
    return np.bincount(cand_sent, weights=clipped, minlength=n_img).astype(np.int64)


def _closest_ref_len(corpus: NgramCorpus, cand_len: np.ndarray) -> np.ndarray:
    """bleu_scorer.py `_single_reflen(option="closest")`: min over refs of (|r - c|, r)."""
    ref_len = corpus.sent_len[corpus.n_images :]
    ref_img = corpus.img_of_sent[corpus.n_images :]
    base = int(ref_len.max(initial=0)) + 1
    key = np.abs(ref_len - cand_len[ref_img]) * base + ref_len  # lexicographic (diff, length)
    best = np.minimum.reduceat(key, corpus.ref_offset[:-1] - corpus.n_images)
    return best % base


def _bleu_formula(
    correct: np.ndarray, guess: np.ndarray, c: np.ndarray, r: np.ndarray
) -> np.ndarray:
    """BLEU-1..n for rows of counts, in the same floating-point order as bleu_scorer.py."""
    n = correct.shape[-1]
    precision = (correct.astype(np.float64) + _TINY) / (guess.astype(np.float64) + _SMALL)
    running = np.cumprod(precision, axis=-1)  # `bleu *= ...` over k, then `bleu ** (1/(k+1))`
    scores = running ** (1.0 / np.arange(1, n + 1, dtype=np.float64))
    ratio = (c.astype(np.float64) + _TINY) / (r.astype(np.float64) + _SMALL)
    with np.errstate(over="ignore", divide="ignore"):
        penalty = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    return scores * penalty[..., None]


def bleu_scores(corpus: NgramCorpus, n: int = 4) -> tuple[list[float], np.ndarray]:
    """BLEU-1..n as pycocoevalcap's ``Bleu(n).compute_score``.

    Args:
        corpus: the encoded candidates and references.
        n: highest n-gram order.

    Returns:
        ``(corpus_scores, per_image)``: ``corpus_scores[k-1]`` is corpus-level BLEU-k (counts
        pooled over images), ``per_image`` has shape ``(n_images, n)``.
    """
    if n > corpus.max_n:
        raise ValueError(f"corpus was encoded for n-grams up to {corpus.max_n}, asked for {n}")
    cand_len = corpus.sent_len[: corpus.n_images]
    correct = np.stack([_clipped_counts(corpus, k) for k in range(1, n + 1)], axis=1)
    guess = np.maximum(0, cand_len[:, None] - np.arange(n)[None, :])
    ref_len = _closest_ref_len(corpus, cand_len)
    per_image = _bleu_formula(correct, guess, cand_len, ref_len)

    # Corpus level with Python floats, mirroring the scalar loop of compute_score.
    total_c, total_r = int(cand_len.sum()), int(ref_len.sum())
    total_correct, total_guess = correct.sum(axis=0).tolist(), guess.sum(axis=0).tolist()
    scores, running = [], 1.0
    for k in range(n):
        running *= float(total_correct[k] + _TINY) / (total_guess[k] + _SMALL)
        scores.append(running ** (1.0 / (k + 1)))
    ratio = (total_c + _TINY) / (total_r + _SMALL)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores, per_image
