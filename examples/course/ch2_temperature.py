"""Chapter 2: the temperature tau of the contrastive softmax, swept over 0.01 / 0.07 / 0.5.

    .venv/bin/python examples/course/ch2_temperature.py --model runs/demo/model [--plot tau.png]
    .venv/bin/python examples/course/ch2_temperature.py --quick

CLIP turns cosine similarities s_c (in [-1, 1]) into probabilities p_c = softmax_c(s_c / tau).
The cosines are small numbers close together, so tau decides the shape: at tau = 0.5 a cosine
gap of 0.1 is a logit gap of only 0.2 and the softmax stays nearly flat; at CLIP's initial 0.07
(Radford et al. 2021, Sec. 2.5) it becomes 1.4; at 0.01 it is 10 logits and the softmax is
almost one-hot. The ranking never changes (dividing by a
positive number keeps the order): tau changes only how confident the probabilities are, which is
what the loss then trains against. For every row of cosines, the top probability can only fall
as tau grows.

Prints, for one test image against the 24 class prompts, the cosines of the top classes and,
for each tau, the probability of the top-3 classes, the entropy (in nats; ln 24 = 3.18 is
uniform) and the number of classes holding 99% of the mass; and the same for the model's own
learned tau. `--plot` draws the three softmax distributions.

Measured on the demo tower, test image 0 (a red triangle; cosine 0.967 to its class, 0.637 to the
next): top probability 1.0000 / 0.9811 / 0.1958 at tau = 0.01 / 0.07 / 0.5 (entropy 0.000 / 0.117 /
2.764 nats), 0.9887 at the learned tau = 0.0636.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
from course_models import DEMO_MODEL, load_model

from vlkit.data.datasets.easy_vqa import CAPTION_TEMPLATES, CLASS_NAMES, load_easy_vqa
from vlkit.data.images import load_image
from vlkit.evaluation import build_zero_shot_classifier

TAUS = (0.01, 0.07, 0.5)


def describe(probs: torch.Tensor) -> tuple[float, float, int]:
    """(top probability, entropy in nats, classes needed for 99% of the mass)."""
    entropy = float(-(probs * probs.clamp_min(1e-30).log()).sum())
    mass = probs.sort(descending=True).values.cumsum(0)
    return float(probs.max()), entropy, int((mass < 0.99).sum()) + 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEMO_MODEL, help="a CLIP checkpoint directory")
    parser.add_argument("--quick", action="store_true", help="tiny random CLIP (smoke test)")
    parser.add_argument("--image", type=int, default=0, help="index of the easy-VQA test image")
    parser.add_argument("--plot", default=None, help="write the three distributions as a PNG")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    model, tokenizer, transform, what = load_model(args.model, args.quick)
    example = load_easy_vqa("test")[args.image]
    with torch.no_grad():
        image = model.encode_image(transform(load_image(example.path))[None], normalize=True)
        weights = build_zero_shot_classifier(model, tokenizer, CLASS_NAMES, CAPTION_TEMPLATES)
        cosines = (image @ weights.T)[0]  # (24,) in [-1, 1]
        learned_tau = 1 / float(model.temperature())
    print(f"model: {what}; image {example.path} (true class: {CLASS_NAMES[example.label]})")
    order = cosines.argsort(descending=True)
    top3 = [int(c) for c in order[:3]]
    print("cosines of the top classes: " + ", ".join(
        f"{CLASS_NAMES[c]} {float(cosines[c]):+.4f}" for c in top3) +
        f"; spread over all 24: {float(cosines.max() - cosines.min()):.4f}")  # fmt: skip
    print(f"uniform entropy ln 24 = {math.log(len(CLASS_NAMES)):.3f} nats\n")

    rows = [(f"tau = {tau}", tau) for tau in TAUS] + [(f"learned tau = {learned_tau:.4f}",
                                                       learned_tau)]  # fmt: skip
    distributions = {}
    for label, tau in rows:
        probs = (cosines / tau).softmax(dim=0)  # the softmax CLIP trains and predicts with
        distributions[label] = probs
        top, entropy, needed = describe(probs)
        shown = ", ".join(f"{CLASS_NAMES[c]} {float(probs[c]):.4f}" for c in top3)
        print(f"{label:<24} top p {top:.4f}  entropy {entropy:.3f} nats  99% mass in {needed:>2} "
              f"classes  [{shown}]")  # fmt: skip
    tops = [describe(distributions[label])[0] for label, _ in rows[:3]]
    assert tops[0] >= tops[1] >= tops[2], "softmax sharpening is monotone in tau"
    print("\nsmaller tau -> sharper softmax, same ranking (argmax "
          f"{CLASS_NAMES[int(order[0])]} at every tau)")  # fmt: skip

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(TAUS), figsize=(4.2 * len(TAUS), 3.4), sharey=True)
        for ax, (label, _) in zip(axes, rows[:3], strict=True):
            ax.bar(range(len(CLASS_NAMES)), distributions[label][order].numpy())
            ax.set_title(label)
            ax.set_xlabel("classes, by cosine")
        axes[0].set_ylabel("softmax probability")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main(sys.argv[1:])
