"""INT8 on a trained VLM: test metric and answer throughput, fp32 vs dynamic INT8, one run.

    python benchmarks/int8_accuracy.py runs/fc_easy/easy_vqa/llava [--max-test 2000]

Loads a `train_vlm` run directory, evaluates it on its task's test split in fp32 and after
`vlkit.inference.quantize_int8` (dynamic INT8 linear layers, CPU), in the same process on the
same items, and prints the metric, the agreement of the two models' greedy outputs, and
answers per second (generation included).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from vlkit.evaluation.generative import answer_accuracy
from vlkit.inference import load_vlm_run
from vlkit.inference.quantize import quantize_int8
from vlkit.recipes.vlm_data import build_vlm_data
from vlkit.recipes.vlm_run import evaluate_vlm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--max-test", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = load_vlm_run(args.run)
    _, test = build_vlm_data(run.recipe, run.tokenizer, run.transform)
    n = len(test) if args.max_test is None else min(args.max_test, len(test))
    models = {"fp32": run.model, "int8": quantize_int8(run.model)}
    rows, outputs = [], {}
    for name, model in models.items():
        started = time.perf_counter()
        metrics = evaluate_vlm(model, test, run.recipe.task, n)
        seconds = time.perf_counter() - started
        max_new = test.max_length if run.recipe.task == "scene_captions" else 3
        outputs[name] = answer_accuracy(model, test, range(min(n, 512)), 256, max_new)[1]
        metric = "accuracy" if "accuracy" in metrics else "cider_d"
        rows.append((name, metric, metrics[metric], n / seconds))
    agree = sum(a == b for a, b in zip(outputs["fp32"], outputs["int8"], strict=True))
    print(f"{args.run}: {run.recipe.kind} on {run.recipe.task}, {n} test items, "
          f"{platform.machine()} {args.threads} thread(s), torch {torch.__version__}")  # fmt: skip
    print("| weights | metric | value | items/s (generation included) |\n|---|---|---|---|")
    for name, metric, value, speed in rows:
        print(f"| {name} | {metric} | {value:.4f} | {speed:.1f} |")
    print(f"greedy outputs identical on {agree}/{len(outputs['fp32'])} of the first items")


if __name__ == "__main__":
    main()
