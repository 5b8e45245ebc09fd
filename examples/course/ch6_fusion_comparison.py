"""Chapter 6: the fusion architectures side by side, same data, same frozen tower, same steps.

    .venv/bin/python examples/course/ch6_fusion_comparison.py --vision runs/demo/model
    .venv/bin/python examples/course/ch6_fusion_comparison.py --quick    # tiny, seconds each

Every generative VLM joins a vision encoder and a language decoder; the architectures differ in
where the image enters the decoder (the course's fusion taxonomy):

* llava: a projector maps each image token into the decoder's input sequence (Liu et al. 2023);
* qformer: a Q-Former's learned queries compress the image to a few tokens first (BLIP-2, Li et
  al. 2023);
* flamingo: the text stream stays text; gated cross-attention layers inside the decoder read the
  image (Alayrac et al. 2022);
* cogvlm: image tokens in the sequence, with their own "visual expert" weights in every layer
  (Wang et al. 2023);
* early: no separate tower; raw patches are embedded linearly and read by the decoder
  (Fuyu / Chameleon-style early fusion).

Each kind trains with `vlkit.recipes.vlm_run.train_vlm` for the same steps on easy-VQA questions,
the image tower frozen (the demo's CLIP tower by default), the same decoder, and reports
trainable parameters, training FLOPs per sample and test accuracy (exact match of the greedy
answer). The full study with more steps and tasks is benchmarks/fusion_comparison.py (its numbers
are in benchmarks/RESULTS.md). `--quick` trains tiny models for two steps on a few synthetic
scene questions: the table then shows the costs, not what the architectures can learn.

Measured with `--steps 150 --max-test 300` (2-core CPU shared with other jobs, 2026-12-07), test
accuracy on 300 easy-VQA questions: llava 0.703, qformer 0.787, flamingo 0.767, cogvlm 0.763,
early 0.790; trainable parameters 0.62 / 1.54 / 1.39 / 1.14 / 0.57 M. At 150 steps every kind is
still learning: this ranks early progress, not the architectures' ceilings.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from vlkit.recipes.vlm_run import VLMRecipe, train_vlm
from vlkit.training.vlm_recipe import VisionSource

KINDS = ("llava", "qformer", "flamingo", "cogvlm", "early")
QUICK = dict(task="scene_questions", steps=2, train_scenes=24, test_scenes=3, batch_size=8,
             hidden_size=32, intermediate_size=64, layers=1, heads=2, num_queries=4)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vision", default="runs/demo/model", help="the frozen CLIP tower")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--max-test", type=int, default=1000, help="test questions to score")
    parser.add_argument("--out", default=None, help="keep the runs here (default: temporary)")
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 steps (smoke test)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]

    if args.quick:
        settings = dict(QUICK, vision=VisionSource(preset="tiny"), device="cpu")
    else:
        if not Path(args.vision).is_dir():
            raise SystemExit(f"--vision {args.vision}: no such checkpoint (`vlkit demo --out "
                             "runs/demo` makes one), or pass --quick")  # fmt: skip
        settings = dict(task="easy_vqa", steps=args.steps, max_test=args.max_test,
                        vision=VisionSource(path=args.vision), device="cpu")  # fmt: skip
    print(f"task {settings['task']}, {settings['steps']} steps per kind, image tower "
          f"{'tiny, random' if args.quick else args.vision} (frozen)\n")  # fmt: skip
    print(
        "| kind | trainable params | total params | train GFLOPs / sample | train s | "
        "test accuracy |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.out) if args.out else Path(scratch)
        for kind in kinds:
            summary = train_vlm(VLMRecipe(kind=kind, **settings), root / kind, overwrite=True,
                                progress=False)  # fmt: skip
            print(
                f"| {kind} | {summary['trainable_parameters']:,} | "
                f"{summary['total_parameters']:,} | {summary['train_gflops']:.4f} | "
                f"{summary['train_seconds']:.1f} | {summary['accuracy']:.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:])
