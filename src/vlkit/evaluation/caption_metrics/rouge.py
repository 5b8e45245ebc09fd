"""ROUGE-L exactly as pycocoevalcap computes it (Lin 2004), with a vectorised bit-parallel LCS.

pycocoevalcap (``rouge/rouge.py``) fills an O(m*n) dynamic-programming table in Python for every
(candidate, reference) pair. The LCS length is computed here with the bit-parallel algorithm of
Hyyrö (2004, "Bit-parallel LCS-length computation revisited"; also Crochemore et al. 2001): the
candidate's positions are the bits of one machine word, and each reference token updates it with

    U = V & match_mask(token);  V = (V + U) | (V - U)

after which the LCS length is the number of zero bits of V. The update runs for all pairs at once
as ``uint64`` numpy arrays, one step per reference position. Candidates longer than 64 tokens use
the same recurrence on Python integers (arbitrary width).

The reproduced details of ``Rouge.calc_score``: beta = 1.2; precision ``lcs / len(candidate)``
and recall ``lcs / len(reference)`` are maximised *separately* over the references; the score is
``(1 + beta^2) P R / (R + beta^2 P)``, or 0 when either maximum is 0; the corpus score is the mean
over images. pycocoevalcap splits on a single space, so an empty caption is the one-token list
``[""]`` (length 1, and it matches another empty caption); that is reproduced here. Captions are
otherwise token lists, so runs of spaces (empty tokens in pycocoevalcap) do not arise.
"""

from __future__ import annotations

import numpy as np

from vlkit.evaluation.caption_metrics.bleu import NgramCorpus

BETA = 1.2
_WORD = 64
_EMPTY_TOKEN = -1  # stands for the "" token that "".split(" ") produces


def _popcount64(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).astype(np.int64)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
    return table[x.view(np.uint8).reshape(-1, 8)].sum(axis=1)


def _rouge_sequences(corpus: NgramCorpus) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids, starts and lengths per sentence, with an empty sentence turned into [""]."""
    old_len = corpus.sent_len
    empty = old_len == 0
    if not empty.any():
        return corpus.tokens, corpus.sent_start[:-1], old_len
    new_len = np.where(empty, 1, old_len)
    new_start = np.zeros(len(new_len) + 1, dtype=np.int64)
    np.cumsum(new_len, out=new_start[1:])
    tokens = np.empty(int(new_start[-1]), dtype=np.int64)
    shift = np.repeat(new_start[:-1] - corpus.sent_start[:-1], old_len)
    tokens[np.arange(len(corpus.tokens)) + shift] = corpus.tokens
    tokens[new_start[:-1][empty]] = _EMPTY_TOKEN
    return tokens, new_start[:-1], new_len


def _lcs_python(a: list[int], b: list[int]) -> int:
    """Bit-parallel LCS length on Python ints (any length)."""
    masks: dict[int, int] = {}
    for i, t in enumerate(a):
        masks[t] = masks.get(t, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for t in b:
        u = v & masks.get(t, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def lcs_lengths(corpus: NgramCorpus) -> np.ndarray:
    """LCS length of every reference with its image's candidate, in reference-sentence order."""
    n_img = corpus.n_images
    tokens, start, length = _rouge_sequences(corpus)
    ref_sents = np.arange(n_img, corpus.n_sentences)
    ref_img = corpus.img_of_sent[n_img:]
    cand_len = length[:n_img]
    lcs = np.zeros(len(ref_sents), dtype=np.int64)

    short = cand_len[ref_img] <= _WORD
    # Match masks: for (image, token) of each candidate, the bit set of positions holding it.
    cand_ok = np.flatnonzero(cand_len <= _WORD)
    c_len = cand_len[cand_ok]
    c_pos = np.repeat(start[cand_ok], c_len) + (
        np.arange(int(c_len.sum())) - np.repeat(np.cumsum(c_len) - c_len, c_len)
    )
    c_img = np.repeat(cand_ok, c_len)
    bits = np.left_shift(np.uint64(1), (c_pos - start[c_img]).astype(np.uint64))
    offset = 1 - _EMPTY_TOKEN  # shifts every id (the empty token included) to >= 1
    n_tok = int(tokens.max(initial=0)) + offset + 1
    c_key = c_img * n_tok + tokens[c_pos] + offset
    order = np.argsort(c_key, kind="stable")
    c_key = c_key[order]
    if len(c_key):
        first = np.flatnonzero(np.r_[True, c_key[1:] != c_key[:-1]])
        keys = c_key[first]
        masks = np.bitwise_or.reduceat(bits[order], first)
    else:
        keys = np.zeros(0, dtype=np.int64)
        masks = np.zeros(0, dtype=np.uint64)

    # Match mask of every reference token against its image's candidate, in one lookup.
    r_tok_img = np.repeat(ref_img, length[n_img:])
    r_tok_key = r_tok_img * n_tok + tokens[start[n_img] :] + offset
    if len(keys):
        idx = np.minimum(np.searchsorted(keys, r_tok_key), len(keys) - 1)
        r_masks = np.where(keys[idx] == r_tok_key, masks[idx], np.uint64(0))
    else:
        r_masks = np.zeros(len(r_tok_key), dtype=np.uint64)

    # Pairs handled in uint64 words, longest reference first so that step j touches a prefix.
    pairs = np.flatnonzero(short)
    r_len = length[ref_sents[pairs]]
    pairs = pairs[np.argsort(-r_len, kind="stable")]
    r_len = length[ref_sents[pairs]]
    r_start = start[ref_sents[pairs]] - start[n_img]
    v = np.full(len(pairs), np.iinfo(np.uint64).max, dtype=np.uint64)
    max_len = int(r_len[0]) if len(pairs) else 0
    # Number of references longer than j, for each step j (r_len is descending).
    n_active = np.searchsorted(-r_len, -np.arange(max_len), side="left")
    for j in range(max_len):
        active = int(n_active[j])
        m = r_masks[r_start[:active] + j]
        va = v[:active]
        u = va & m
        v[:active] = (va + u) | (va - u)  # uint64 wrap-around drops the carry out of bit 63
    # Bits above the candidate length start at 1 and stay 1, so zeros are exactly the LCS.
    lcs[pairs] = _WORD - _popcount64(v)

    for p in np.flatnonzero(~short):
        c = int(ref_img[p])
        a = tokens[start[c] : start[c] + length[c]].tolist()
        s = int(ref_sents[p])
        b = tokens[start[s] : start[s] + length[s]].tolist()
        lcs[p] = _lcs_python(a, b)
    return lcs


def rouge_l_scores(corpus: NgramCorpus, beta: float = BETA) -> tuple[float, np.ndarray]:
    """ROUGE-L as pycocoevalcap's ``Rouge().compute_score``.

    Args:
        corpus: the encoded candidates and references.
        beta: recall weight (pycocoevalcap: 1.2).

    Returns:
        ``(corpus_score, per_image)``; the corpus score is the mean of the per-image scores.
    """
    n_img = corpus.n_images
    _, _, length = _rouge_sequences(corpus)
    lcs = lcs_lengths(corpus).astype(np.float64)
    ref_img = corpus.img_of_sent[n_img:]
    precision = lcs / length[:n_img][ref_img].astype(np.float64)
    recall = lcs / length[n_img:].astype(np.float64)
    group = corpus.ref_offset[:-1] - n_img
    p_max = np.maximum.reduceat(precision, group)
    r_max = np.maximum.reduceat(recall, group)
    b2 = beta**2
    with np.errstate(divide="ignore", invalid="ignore"):
        score = ((1 + b2) * p_max * r_max) / (r_max + b2 * p_max)
    score = np.where((p_max != 0) & (r_max != 0), score, 0.0)
    return float(np.mean(score)), score
