"""Prompt-based debiasing of text embeddings at inference (Chuang et al. 2023, "Debiasing
Vision-Language Models via Biased Prompts").

The bias subspace is spanned by the differences of embeddings of prompts that differ only in
the sensitive attribute ("a photo of a male doctor" - "a photo of a female doctor"). Zero-shot
classifiers and retrieval queries then use text embeddings with that subspace projected out,
so no prompt can prefer one group through it; the image tower is left as it is.

- `bias_projection` (their §3.1, with the subspace spanned by prompt differences):
  `P_0 = I - U U^T`, U an orthonormal basis of the differences (SVD, so dependent pairs and
  near-zero differences are dropped); P_0 is symmetric and idempotent.
- `calibrated_projection` (their §3.2, eq. 5): pairs that should become equal are made equal
  while staying close to P_0: `P* = P_0 (I + lambda / |S| sum_{(i, j) in S} (z_i - z_j)(z_i -
  z_j)^T)^{-1}`, the closed-form minimiser of `||P - P_0||^2 + lambda / |S| sum ||P z_i -
  P z_j||^2`.
- `debias_text_embeddings`: applies a projection and re-normalises (CLIP compares unit vectors).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = [
    "bias_directions",
    "bias_projection",
    "calibrated_projection",
    "debias_text_embeddings",
    "parse_prompt_pairs",
    "pair_embeddings",
]

TextEncoder = Callable[[Sequence[str]], torch.Tensor]


def parse_prompt_pairs(text: str) -> list[tuple[str, str]]:
    """Reads `"a photo of a man|a photo of a woman;a male doctor|a female doctor"`.

    Pairs are separated by ";" and the two prompts of a pair by "|".

    Raises:
        ValueError: An empty list, or a pair that is not two non-empty prompts.
    """
    pairs = []
    for item in text.split(";"):
        if not item.strip():
            continue
        parts = [part.strip() for part in item.split("|")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(
                f"prompt pair {item.strip()!r}: expected two prompts separated by '|' "
                "(pairs separated by ';', e.g. 'a photo of a man|a photo of a woman')"
            )
        pairs.append((parts[0], parts[1]))
    if not pairs:
        raise ValueError("no prompt pairs: give 'PROMPT A|PROMPT B;...'")
    return pairs


def pair_embeddings(
    encode: TextEncoder, pairs: Sequence[tuple[str, str]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit text embeddings `(first (P, D), second (P, D))` of the pairs' two sides."""
    first = encode([a for a, _ in pairs])
    second = encode([b for _, b in pairs])
    return first, second


def bias_directions(first: torch.Tensor, second: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """An orthonormal basis U (D, r) of the span of the pair differences `first - second`.

    Singular values below `rtol` times the largest are dropped (dependent or equal pairs).
    """
    differences = (first - second).double()  # (P, D)
    _, singular, vh = torch.linalg.svd(differences, full_matrices=False)
    if singular.numel() == 0 or singular[0] <= 0:
        raise ValueError("the prompt pairs have equal embeddings: no bias direction to remove")
    keep = singular > rtol * singular[0]
    return vh[keep].T.to(first.dtype)  # (D, r)


def bias_projection(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """`P_0 = I - U U^T` (D, D): the projection onto the orthogonal complement of the bias
    subspace spanned by the pair differences (Chuang et al. §3.1)."""
    basis = bias_directions(first, second).double()
    eye = torch.eye(basis.shape[0], dtype=torch.float64)
    return (eye - basis @ basis.T).to(first.dtype)


def calibrated_projection(
    first: torch.Tensor,
    second: torch.Tensor,
    equalize: tuple[torch.Tensor, torch.Tensor],
    strength: float = 1000.0,
) -> torch.Tensor:
    """The calibrated projection `P*` of Chuang et al. §3.2 (eq. 5), (D, D).

    Args:
        first, second: The bias prompt pairs' embeddings (define P_0).
        equalize: Embeddings `(z_i (S, D), z_j (S, D))` of pairs that should map to the same
            point, typically class-specific ("a photo of a male doctor" / "a photo of a female
            doctor") while the bias pairs are generic ("a photo of a man" / "... a woman").
            (The bias pairs themselves would change nothing: P_0 already maps them together.)
        strength: lambda: how strongly the pairs are equalised (the paper uses 500-1000).
    """
    if strength < 0:
        raise ValueError(f"strength (lambda) must be >= 0, got {strength}")
    p0 = bias_projection(first, second).double()
    z_i, z_j = equalize
    differences = (z_i - z_j).double()  # (S, D)
    scatter = differences.T @ differences / len(differences)  # 1/|S| sum (zi - zj)(zi - zj)^T
    eye = torch.eye(p0.shape[0], dtype=torch.float64)
    return (p0 @ torch.linalg.inv(eye + strength * scatter)).to(first.dtype)


def debias_text_embeddings(text: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """Text embeddings (N, D) projected (`z P^T`) and re-normalised to unit length."""
    projected = text @ projection.T.to(text.dtype)
    return torch.nn.functional.normalize(projected, dim=-1)
