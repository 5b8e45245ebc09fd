"""Chapter 5: InfoNCE, its gradient by hand against autograd, and the mutual-information bound.

    .venv/bin/python examples/course/ch5_infonce.py [--quick]

CLIP's loss (Radford et al. 2021, Fig. 3; `vlkit.losses.clip_loss`) over a batch of N pairs with
unit embeddings x_i (images), y_j (texts) and scale s = 1 / tau:

    L = s x_i . y_j (the logits),  P = softmax over rows of L,  Q = softmax over rows of L^T
    loss = 1/2 [ -1/N sum_i log P_ii  -  1/N sum_j log Q_jj ]

Its gradient, written out (the softmax cross-entropy derivative, softmax minus one-hot):

    d loss / d x_i = s / (2N) [ sum_j (P_ij - delta_ij) y_j  +  sum_j (Q_ji - delta_ij) y_j ]
    d loss / d y_j = s / (2N) [ sum_i (P_ij - delta_ij) x_i  +  sum_i (Q_ji - delta_ij) x_i ]

Read as forces: the positive y_i pulls x_i with weight (1 - P_ii) and every negative y_j pushes
with weight P_ij, proportional to exp(s cos(x_i, y_j)): the hardest negatives (most similar)
get most of the push, the easy ones almost none. That is the hard-negative view of InfoNCE
(what Robinson et al. 2021 sharpen further with their beta).

Mutual information (van den Oord et al. 2018, "CPC", Sec. 2.3; Poole et al. 2019): for each
direction, I(X; Y) >= log N - loss. The bound can never exceed log N: a batch of N certifies at
most log N nats, one reason contrastive learning wants large batches.

Prints: max |analytic - autograd| for both gradients (float64), the push weights of one anchor's
negatives against their cosines, and log N - loss for random and for aligned pairs at several N.

Measured (seed 0, tau 0.07): analytic vs autograd within 2.2e-16; on the shown anchor the hardest
negative (cosine 0.227) takes 80% of the push; aligned pairs give a bound of 2.05 / 3.26 / 4.07 /
4.21 nats at N = 8 / 64 / 512 / 2048 (log N = 2.08 / 4.16 / 6.24 / 7.62), random pairs a negative
one.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

from vlkit.losses import clip_loss


def analytic_gradients(
    x: torch.Tensor, y: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """d loss / d x and d loss / d y of the symmetric InfoNCE, from the formulas above."""
    n = x.shape[0]
    logits = scale * x @ y.T  # (N, N): row i = image i against every text
    eye = torch.eye(n, dtype=x.dtype)
    p = logits.softmax(dim=1) - eye  # image -> text: softmax minus one-hot
    q = logits.T.softmax(dim=1) - eye  # text -> image
    grad_x = scale / (2 * n) * (p @ y + q.T @ y)
    grad_y = scale / (2 * n) * (p.T @ x + q @ x)
    return grad_x, grad_y


def aligned_pairs(n: int, dim: int, noise: float, generator: torch.Generator):
    """Unit image embeddings and text embeddings that are noisy copies of them."""
    x = F.normalize(torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=-1)
    y = F.normalize(x + noise * torch.randn(n, dim, generator=generator, dtype=torch.float64),
                    dim=-1)  # fmt: skip
    return x, y


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches")
    parser.add_argument("--tau", type=float, default=0.07)
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    scale, n, dim = 1 / args.tau, 8, 32

    # 1. The gradient by hand against autograd, in float64.
    x, y = aligned_pairs(n, dim, noise=1.0, generator=generator)
    x.requires_grad_(True)
    y.requires_grad_(True)
    loss = clip_loss(x, y, scale)
    loss.backward()
    grad_x, grad_y = analytic_gradients(x.detach(), y.detach(), scale)
    dx = float((grad_x - x.grad).abs().max())
    dy = float((grad_y - y.grad).abs().max())
    print(f"batch {n}, dim {dim}, tau {args.tau}: loss {float(loss.detach()):.4f}")
    print(f"max |analytic - autograd|: d/dx {dx:.2e}, d/dy {dy:.2e} "
          f"(gradient entries up to {float(x.grad.abs().max()):.3f})")  # fmt: skip

    # 2. The hard-negative view: each negative's push on anchor 0 is P_0j ~ exp(s cos).
    with torch.no_grad():
        cosines = (x[0] @ y.T).detach()
        weights = (scale * cosines).softmax(dim=0)
    print(f"\nanchor 0: positive cos {float(cosines[0]):+.3f}, pull weight 1 - P_00 = "
          f"{1 - float(weights[0]):.4f}")  # fmt: skip
    order = [int(j) for j in cosines[1:].argsort(descending=True) + 1]
    for j in order:
        print(f"  negative {j}: cos {float(cosines[j]):+.3f}  push weight P_0{j} = "
              f"{float(weights[j]):.4f}")  # fmt: skip
    hardest = float(weights[order[0]]) / float(weights[1:].sum())
    print(f"the hardest negative gets {hardest:.0%} of the push on anchor 0")

    # 3. The mutual-information bound log N - loss, capped at log N.
    print("\nI(X;Y) >= log N - loss (nats)")
    sizes = (8, 64) if args.quick else (8, 64, 512, 2048)
    for size in sizes:
        rows = []
        for name, noise in (("random pairs", None), ("aligned, noise 0.3", 0.3)):
            if noise is None:
                a = F.normalize(torch.randn(size, dim, generator=generator, dtype=torch.float64),
                                dim=-1)  # fmt: skip
                b = F.normalize(torch.randn(size, dim, generator=generator, dtype=torch.float64),
                                dim=-1)  # fmt: skip
            else:
                a, b = aligned_pairs(size, dim, noise, generator)
            with torch.no_grad():
                value = float(clip_loss(a, b, scale))
            rows.append(f"{name}: loss {value:.3f}, bound {math.log(size) - value:+.3f}")
        print(f"  N = {size:>4} (log N = {math.log(size):.3f}): " + "; ".join(rows))
    print("random pairs: the bound is negative (nothing certified; at a low tau the random "
          "cosines make confident wrong guesses); aligned pairs: it grows with N but never "
          "passes log N")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
