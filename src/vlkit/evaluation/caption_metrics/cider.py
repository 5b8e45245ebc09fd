"""CIDEr-D exactly as pycocoevalcap's ``Cider`` computes it (Vedantam et al. 2015), vectorised.

pycocoevalcap's ``Cider`` class (``cider/cider_scorer.py``) is the CIDEr-D variant of the paper
(Sec. 4 / 8 of Vedantam et al. 2015, "CIDEr: Consensus-based Image Description Evaluation"). For
each n-gram order n = 1..4 and each sentence s, the TF-IDF vector has entries

    g_n(s)[w] = tf(w, s) * (log(N) - log(max(1, df(w))))

where N is the number of *images* evaluated ("ref_len", not a reference length) and df(w) is the
number of images whose references contain w, i.e. the document frequency comes from the
references of the evaluated set itself. Then for a candidate c with references r_1..r_m

    CIDEr-D(c) = 10 / m * sum_j mean_n [ sum_w min(g_n(c)[w], g_n(r_j)[w]) * g_n(r_j)[w]
                                         / (|g_n(c)| |g_n(r_j)|) * exp(-delta^2 / (2 sigma^2)) ]

with sigma = 6, the division skipped when either norm is 0, and delta the difference of the two
sentences' lengths *as counted by pycocoevalcap*: ``counts2vec`` adds up the term frequencies of
the n-grams with index ``n == 1``, which are the bigrams, so a length is ``max(len - 1, 0)``.
The corpus score is the mean over images.

Plain CIDEr (`cider_scores`), the formula of the paper's Sec. 4 (Eq. 2-3) that courses teach, is
the same computation without the two CIDEr-D changes: no clipping (the dot product is
sum_w g_n(c)[w] * g_n(r_j)[w]) and no length penalty. Its reference implementation is the
original CIDEr repository's ``pyciderevalcap/cider/cider_scorer.py`` (vrama91/cider, "corpus"
document frequencies), which is pycocoevalcap's scorer with the two lines marked "vrama91: added
clipping" and "added a length based gaussian penalty" left out; like it, the score keeps the
mean over n (uniform weights w_n = 1/4) and the factor 10 (both in pycocoevalcap's scorer too).
Note the names: pycocoevalcap's class called ``Cider`` computes CIDEr-D.

Everything is computed with the sorted (sentence, n-gram id) counts of :class:`NgramCorpus`:
document frequencies are a ``bincount``, norms a weighted ``bincount``, and the clipped dot
products a ``searchsorted`` join of each reference's n-grams with its image's candidate.
"""

from __future__ import annotations

import numpy as np

from vlkit.evaluation.caption_metrics.bleu import NgramCorpus

SIGMA = 6.0


def cider_d_scores(
    corpus: NgramCorpus, n: int = 4, sigma: float = SIGMA
) -> tuple[float, np.ndarray]:
    """CIDEr-D as pycocoevalcap's ``Cider().compute_score``.

    Args:
        corpus: the encoded candidates and references.
        n: highest n-gram order (pycocoevalcap: 4).
        sigma: standard deviation of the Gaussian length penalty (pycocoevalcap: 6).

    Returns:
        ``(corpus_score, per_image)``; the corpus score is the mean of the per-image scores.
    """
    return _cider(corpus, n, sigma, clipped=True)


def cider_scores(corpus: NgramCorpus, n: int = 4) -> tuple[float, np.ndarray]:
    """Plain CIDEr (Vedantam et al. 2015, Eq. 2-3): TF-IDF cosine, no clipping, no length penalty.

    Equal to the original CIDEr code (vrama91/cider ``pyciderevalcap/cider``, df_mode="corpus");
    see the module docstring. Always at least CIDEr-D on the same corpus.

    Returns:
        ``(corpus_score, per_image)``; the corpus score is the mean of the per-image scores.
    """
    return _cider(corpus, n, None, clipped=False)


def _cider(
    corpus: NgramCorpus, n: int, sigma: float | None, clipped: bool
) -> tuple[float, np.ndarray]:
    """CIDEr-D (`clipped`, Gaussian length penalty of `sigma`) or plain CIDEr (neither)."""
    if n > corpus.max_n:
        raise ValueError(f"corpus was encoded for n-grams up to {corpus.max_n}, asked for {n}")
    n_img = corpus.n_images
    n_sent = corpus.n_sentences
    log_n_images = np.log(float(n_img))  # cider_scorer.py `self.ref_len`
    ref_img = corpus.img_of_sent[n_img:]
    n_ref_total = n_sent - n_img

    if sigma is None:
        penalty = np.ones(n_ref_total)
    else:
        # counts2vec's `length`: the number of bigrams (see module docstring).
        length = np.maximum(corpus.sent_len - 1, 0)
        delta = (length[:n_img][ref_img] - length[n_img:]).astype(np.float64)
        penalty = np.e ** (-(delta**2) / (2 * sigma**2))

    val = np.zeros((n_ref_total, n), dtype=np.float64)
    for k in range(1, n + 1):
        gid, sent, cnt, n_ids = corpus.counts(k)
        is_cand = sent < n_img
        is_ref = ~is_cand
        ref_sent = sent[is_ref]
        ref_gid = gid[is_ref]
        # (n-gram, image) keys of the reference entries are non-decreasing (NgramCorpus.counts).
        ref_key = ref_gid * n_img + corpus.img_of_sent[ref_sent]
        # Document frequency: number of images whose reference set contains the n-gram.
        first = np.r_[True, ref_key[1:] != ref_key[:-1]] if len(ref_key) else np.zeros(0, bool)
        df = np.bincount(ref_gid[first], minlength=n_ids).astype(np.float64)
        idf = log_n_images - np.log(np.maximum(1.0, df))
        weight = cnt.astype(np.float64) * idf[gid]
        norm = np.sqrt(np.bincount(sent, weights=weight * weight, minlength=n_sent))

        # Join each reference n-gram with the same n-gram of its image's candidate (if any).
        cand_key = gid[is_cand] * n_img + sent[is_cand]  # sorted too
        vec_ref = weight[is_ref]
        if len(cand_key):
            idx = np.minimum(np.searchsorted(cand_key, ref_key), len(cand_key) - 1)
            vec_hyp = np.where(cand_key[idx] == ref_key, weight[is_cand][idx], 0.0)
        else:
            vec_hyp = np.zeros_like(vec_ref)
        # CIDEr-D, "vrama91: added clipping": min(hyp, ref) * ref; plain CIDEr: hyp * ref. An
        # n-gram absent from either side adds 0.
        contrib = (np.minimum(vec_hyp, vec_ref) if clipped else vec_hyp) * vec_ref
        dot = np.bincount(ref_sent - n_img, weights=contrib, minlength=n_ref_total)
        norm_hyp = norm[:n_img][ref_img]
        norm_ref = norm[n_img:]
        both = (norm_hyp != 0) & (norm_ref != 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = np.where(both, dot / (norm_hyp * norm_ref), dot)
        val[:, k - 1] = cos * penalty

    group = corpus.ref_offset[:-1] - n_img
    summed = np.add.reduceat(val, group, axis=0)  # `score += sim(...)` over the references
    per_image = np.mean(summed, axis=1)
    per_image /= corpus.n_refs
    per_image *= 10.0
    return float(np.mean(per_image)), per_image
