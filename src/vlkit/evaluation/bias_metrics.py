"""Bias metrics of a ranking and of zero-shot associations: pure functions of arrays.

Ranking metrics (Geyik, Ambler & Kenthapadi 2019, "Fairness-Aware Ranking in Search &
Recommendation Systems", §3): images are ranked by their similarity to one prompt ("a photo of
a doctor"); each image belongs to one group `a_i` of a sensitive attribute; `p_q(a_i)` is the
desired proportion of group `a_i` (by default its share of the audited data, so a ranking that
ignores the attribute scores 0).

- Skew@k (their eq. 1): `Skew_{a_i}@k = ln(p_{top k}(a_i) / p_q(a_i))`: > 0 when the group is
  over-represented among the k best-ranked images, < 0 when under-represented, -inf when absent.
- MaxSkew@k / MinSkew@k (§3.1): the largest / smallest Skew@k over the groups; MaxSkew@k is
  what Berg et al. 2022 ("A Prompt Array Keeps the Bias Away") and Chuang et al. 2023 report
  for CLIP.
- NDKL (§3.2): `1/Z * sum_{i=1}^{|tau|} 1/log2(i+1) * KL(D_{top i} || D_q)`, `Z = sum_i
  1/log2(i+1)`: the KL divergence of every prefix's group distribution from the desired one,
  discounted by rank as in NDCG; 0 for a perfectly fair ranking, >= 0 always.

Association metrics: the rate at which a group's images get prompt P as their top prompt
(zero-shot argmax), with Wilson score intervals (Wilson 1927; Brown, Cai & DasGupta 2001
recommend it over the normal approximation for small groups and rates near 0 or 1), and
percentile-bootstrap intervals for the ranking metrics (resampling images).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "association_rates",
    "bootstrap_interval",
    "desired_proportions",
    "group_proportions",
    "max_skew_at_k",
    "min_skew_at_k",
    "ndkl",
    "skew_at_k",
    "wilson_interval",
]


def desired_proportions(
    groups: Sequence[str], names: Sequence[str], kind: str = "dataset"
) -> np.ndarray:
    """The desired proportion `p_q` of each group of `names`.

    Args:
        groups: The group of every audited image.
        names: The groups, in the order of the result.
        kind: "dataset" (each group's share of `groups`) or "uniform" (1 / number of groups).
    """
    if kind == "uniform":
        return np.full(len(names), 1.0 / len(names))
    if kind != "dataset":
        raise ValueError(f"desired proportions: 'dataset' or 'uniform', got {kind!r}")
    return group_proportions(groups, names)


def group_proportions(groups: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """The share of each of `names` among `groups` (zeros for an empty list)."""
    counts = np.array([sum(g == name for g in groups) for name in names], dtype=np.float64)
    return counts / max(len(groups), 1)


def _top_k_groups(scores: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    if not 1 <= k <= len(scores):
        raise ValueError(f"k={k}: must be in [1, {len(scores)}] (the number of ranked items)")
    # Stable descending order: ties keep their input order, so results are reproducible.
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return groups[order[:k]]


def skew_at_k(
    scores: Sequence[float], groups: Sequence[str], k: int, desired: dict[str, float]
) -> dict[str, float]:
    """Skew@k of every group (Geyik et al. eq. 1), ranking by `scores`, best first.

    Args:
        scores: One score per item (higher ranks first).
        groups: The group of each item.
        k: How many top-ranked items to look at.
        desired: `p_q` of each group (positive).

    Returns:
        `{group: ln(p_topk(group) / p_q(group))}`; -inf for a group absent from the top k.
    """
    top = _top_k_groups(np.asarray(scores), np.asarray(groups), k)
    skews = {}
    for name, target in desired.items():
        if target <= 0:
            raise ValueError(f"desired proportion of group {name!r} must be > 0, got {target}")
        share = float(np.mean(top == name))
        skews[name] = math.log(share / target) if share > 0 else -math.inf
    return skews


def max_skew_at_k(
    scores: Sequence[float], groups: Sequence[str], k: int, desired: dict[str, float]
) -> float:
    """MaxSkew@k: the most over-represented group's Skew@k (>= 0 when `desired` sums to 1)."""
    return max(skew_at_k(scores, groups, k, desired).values())


def min_skew_at_k(
    scores: Sequence[float], groups: Sequence[str], k: int, desired: dict[str, float]
) -> float:
    """MinSkew@k: the most under-represented group's Skew@k (-inf when a group is absent)."""
    return min(skew_at_k(scores, groups, k, desired).values())


def ndkl(scores: Sequence[float], groups: Sequence[str], desired: dict[str, float]) -> float:
    """Normalized discounted cumulative KL-divergence of the ranking (Geyik et al. §3.2).

    `KL(D_{top i} || D_q) = sum_j D_{top i}(j) ln(D_{top i}(j) / D_q(j))` (0 ln 0 = 0), for
    every prefix i = 1..N of the ranking, weighted by 1 / log2(i + 1) and normalised by the
    weights' sum.
    """
    names = list(desired)
    target = np.array([desired[name] for name in names], dtype=np.float64)
    if np.any(target <= 0):
        raise ValueError("every desired proportion must be > 0 for the KL divergence")
    ranked = _top_k_groups(np.asarray(scores), np.asarray(groups), len(scores))
    onehot = np.stack([ranked == name for name in names], axis=1).astype(np.float64)  # (N, G)
    prefix = np.cumsum(onehot, axis=0) / np.arange(1, len(ranked) + 1)[:, None]  # D_{top i}
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(prefix > 0, prefix * np.log(prefix / target), 0.0)
    divergence = terms.sum(axis=1)  # (N,)
    weights = 1.0 / np.log2(np.arange(1, len(ranked) + 1) + 1.0)
    return float((weights * divergence).sum() / weights.sum())


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion.

    `(p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)`, z the normal quantile of
    (1 + confidence) / 2; (0, 1) when there are no trials. Equals
    `scipy.stats.binomtest(successes, trials).proportion_ci(confidence, "wilson")`.
    """
    if trials == 0:
        return 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ValueError(f"successes={successes} must be in [0, trials={trials}]")
    from statistics import NormalDist  # the standard library's inverse normal CDF

    z = NormalDist().inv_cdf((1 + confidence) / 2)
    p, n = successes / trials, trials
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 (n) successes the bound is exactly 0 (1); rounding must not put it past the rate.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def association_rates(
    top_prompt: Sequence[int],
    groups: Sequence[str],
    num_prompts: int,
    names: Sequence[str],
    confidence: float = 0.95,
) -> dict[str, list[dict[str, float]]]:
    """Per group, the fraction of its images whose top prompt is each prompt, with Wilson CIs.

    Args:
        top_prompt: Index of each image's best-scoring prompt.
        groups: Each image's group.
        num_prompts: Number of prompts.
        names: The groups to report.
        confidence: Level of the intervals.

    Returns:
        `{group: [{"rate", "low", "high", "count", "images"} per prompt]}`.
    """
    top = np.asarray(top_prompt)
    member = np.asarray(groups)
    result = {}
    for name in names:
        mine = top[member == name]
        rows = []
        for prompt in range(num_prompts):
            count = int(np.sum(mine == prompt))
            low, high = wilson_interval(count, len(mine), confidence)
            rate = count / len(mine) if len(mine) else math.nan
            rows.append({"rate": rate, "low": low, "high": high, "count": count,
                         "images": len(mine)})  # fmt: skip
        result[name] = rows
    return result


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    size: int,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(indices)` over resampled item indices.

    Args:
        statistic: Computes the metric on the items at the given indices (with repeats).
        size: Number of items.
        samples: Bootstrap resamples.
        confidence: Level of the interval.
        seed: Seed of the resampling (the interval is reproducible).

    Returns:
        The (low, high) percentiles of the finite resampled values ((nan, nan) if none is).
    """
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, size, size)) for _ in range(samples)])
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan
    alpha = (1 - confidence) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))
