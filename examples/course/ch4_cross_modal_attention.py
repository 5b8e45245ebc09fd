"""Chapter 4: cross-modal attention, a small numeric example worked by hand.

    .venv/bin/python examples/course/ch4_cross_modal_attention.py [--quick]

Text tokens ask, image patches answer (Vaswani et al. 2017, Sec. 3.2.2; the cross-attention of
Flamingo's gated blocks, Alayrac et al. 2022, Sec. 2.2): queries come from the text, keys and
values from the image,

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V.

Two text tokens with queries q1 = (1, 0), q2 = (0, 1) attend over three patches with keys
k1 = (1, 0), k2 = (0, 1), k3 = (1, 1) and values v1 = (1, 2), v2 = (3, 4), v3 = (5, 6); d = 2.

    scores q1: (1, 0, 1) / sqrt 2 = (0.7071, 0, 0.7071)
    softmax:   e^0.7071 = 2.0281, so (2.0281, 1, 2.0281) / 5.0562 = (0.4011, 0.1978, 0.4011)
    output 1:  0.4011 v1 + 0.1978 v2 + 0.4011 v3 = (3.0000, 4.0000)
    scores q2: (0, 0.7071, 0.7071) -> (0.1978, 0.4011, 0.4011) -> output 2 = (3.4067, 4.4067)

The text token is replaced by a mixture of patch values weighted by how well its query matches
each key. The script computes this with vlkit's `CrossModalAttention` (projections set to the
identity so that Q, K, V are the numbers above), checks it against the hand values and torch's
`scaled_dot_product_attention`, then masks patch 3 (`media_mask`, as for padding or another
image's patches) and shows the mass move to the others.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

from vlkit.fusion.cross_attention import CrossModalAttention

QUERIES = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (B=1, L=2 text tokens, d=2)
KEYS = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # (1, N=3 patches, 2)
VALUES = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])


def hand_computed() -> tuple[torch.Tensor, torch.Tensor]:
    """The worked example of the docstring: (attention (2, 3), outputs (2, 2))."""
    e = math.exp(1 / math.sqrt(2))
    big, small = e / (2 * e + 1), 1 / (2 * e + 1)
    probs = torch.tensor([[big, small, big], [small, big, big]])
    return probs, probs @ VALUES[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="(the same: it takes a second)")
    parser.parse_args(argv)
    torch.set_printoptions(precision=4, sci_mode=False)

    # One head of width 2 whose projections are the identity, so Q, K, V are the inputs. The
    # keys and values differ here, so they are given through `media_kv` (as a decoder passes
    # the image's keys and values computed once per image).
    attention = CrossModalAttention(dim=2, num_heads=1, bias=False)
    with torch.no_grad():
        for linear in (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj):
            linear.weight.copy_(torch.eye(2))
        kv = (KEYS[:, None], VALUES[:, None])  # (B, H=1, N, d)
        out, probs = attention(QUERIES, None, media_kv=kv, return_attention=True)
        reference = F.scaled_dot_product_attention(QUERIES, KEYS, VALUES)

    hand_probs, hand_out = hand_computed()
    print("attention of each text token over the 3 patches (rows sum to 1):")
    print(probs[0, 0])
    print("outputs (a mixture of the patch values):")
    print(out[0])
    print(f"max |vlkit - hand| attention {float((probs[0, 0] - hand_probs).abs().max()):.2e}, "
          f"outputs {float((out[0] - hand_out).abs().max()):.2e}; "
          f"max |vlkit - torch sdpa| {float((out - reference).abs().max()):.2e}")  # fmt: skip

    # Masking a patch: its key gets -inf before the softmax; the others share its mass.
    with torch.no_grad():
        mask = torch.tensor([[True, True, False]])  # True = may be attended
        masked_out, masked_probs = attention(QUERIES, None, mask, media_kv=kv,
                                             return_attention=True)  # fmt: skip
    print("\nwith patch 3 masked out:")
    print(masked_probs[0, 0])
    print(masked_out[0])
    e = math.exp(1 / math.sqrt(2))
    print(
        f"text token 1: (e^0.7071, 1) / (e^0.7071 + 1) = ({e / (e + 1):.4f}, "
        f"{1 / (e + 1):.4f}) -> output {(e * VALUES[0, 0] + VALUES[0, 1]) / (e + 1)}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
