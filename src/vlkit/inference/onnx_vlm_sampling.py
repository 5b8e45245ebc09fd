"""Next-token choice for the onnxruntime generation loop (`onnx_vlm.py`), in numpy.

The run time of an ONNX export has no torch model, so the logits warpers of
`vlkit.models.decoder.generation._warp` are written again over numpy arrays, in Hugging Face's
order and with its rules (transformers' `TemperatureLogitsWarper`, `TopKLogitsWarper`,
`TopPLogitsWarper` with `min_tokens_to_keep=1`; nucleus sampling of Holtzman et al. 2020):
a filtered token gets -inf. The draw is an inverse-CDF sample from a seeded
`numpy.random.Generator`, so a seed gives the same tokens on every run (not the tokens torch's
`multinomial` draws: the random streams differ).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Sampling", "next_tokens", "warp_logits"]


@dataclass(frozen=True)
class Sampling:
    """How to pick each new token: greedy (`do_sample=False`) or sampled.

    Attributes:
        do_sample: Sample from the warped distribution instead of taking the arg-max.
        temperature: Softmax temperature (> 0).
        top_k: Keep the k most likely tokens (None or 0: all).
        top_p: Keep the smallest set of most likely tokens whose probability reaches top_p,
            in (0, 1] (None or 1: all).
        seed: Seed of the `numpy.random.Generator` a generation call draws from.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(
                f"temperature={self.temperature}: must be > 0 (greedy: do_sample=False)"
            )
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k={self.top_k}: must be >= 0 (0 keeps every token)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1]")

    def generator(self) -> np.random.Generator:
        """A fresh generator seeded with `seed` (one per generation call)."""
        return np.random.default_rng(self.seed)


def warp_logits(
    logits: np.ndarray,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> np.ndarray:
    """Temperature, top-k and top-p filtering of (B, V) logits (filtered entries -> -inf)."""
    logits = logits.astype(np.float32, copy=True)
    if temperature != 1.0:
        logits /= np.float32(temperature)
    if top_k:
        k = min(top_k, logits.shape[-1])
        kth = np.partition(logits, -k, axis=-1)[:, -k][:, None]  # (B, 1) k-th largest
        logits[logits < kth] = -np.inf
    if top_p is not None and top_p < 1.0:
        order = np.argsort(logits, axis=-1, kind="stable")  # ascending, as transformers sorts
        ascending = np.take_along_axis(logits, order, axis=-1)
        cumulative = np.cumsum(_softmax(ascending), axis=-1)
        remove = cumulative <= 1 - top_p
        remove[:, -1] = False  # always keep the most likely token
        np.put_along_axis(logits, order, np.where(remove, -np.inf, ascending), axis=-1)
    return logits


def next_tokens(
    logits: np.ndarray, sampling: Sampling, generator: np.random.Generator | None
) -> np.ndarray:
    """(B,) int64 next tokens of (B, V) last-position logits: arg-max, or a sample."""
    if not sampling.do_sample:
        return logits.argmax(axis=-1).astype(np.int64)
    if generator is None:
        raise ValueError("sampling needs a numpy Generator (Sampling.generator())")
    warped = warp_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p)
    cumulative = np.cumsum(_softmax(warped.astype(np.float64)), axis=-1)  # (B, V)
    draws = generator.random(len(cumulative)) * cumulative[:, -1]  # (B,) uniform in [0, total)
    picks = (cumulative <= draws[:, None]).sum(axis=-1)  # first index whose CDF exceeds the draw
    return np.minimum(picks, logits.shape[-1] - 1).astype(np.int64)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax; -inf entries get probability 0."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
