"""Fusion architectures side by side: same data, same frozen image tower, same decoder, same steps.

    python benchmarks/fusion_comparison.py                       # full comparison (CPU: ~1 h)
    python benchmarks/fusion_comparison.py --steps 50 --max-test 200 --kinds llava early
    python benchmarks/fusion_comparison.py --composed --kinds llava qformer flamingo

For each task (easy-VQA questions, synthetic-scene captions) the script first trains (or reuses)
a small CLIP on that task's images, whose image tower is then frozen and shared by every fusion
model ("early" fusion has no separate tower: it embeds raw patches). Then each architecture of
`vlkit.models.fusion_vlm.FUSION_KINDS` trains with `vlkit.recipes.vlm_run.train_vlm` for the
same number of steps with the same decoder, and the table reports trainable parameters,
forward and training FLOPs per sample (`torch.utils.flop_counter`), training time, easy-VQA
test accuracy (exact match of the greedy answer, all 9,673 test questions) and scene-caption
CIDEr-D (pycocoevalcap-identical, five references per scene). A LLaVA row with the two-stage
schedule (connector only, then connector + decoder, same total steps) is added.

Writes `OUT/results.json` and `OUT/table.md`, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from vlkit.models.fusion_vlm import FUSION_KINDS
from vlkit.recipes.vlm_run import VLMRecipe, train_vlm

# The CLIP pretraining of each task's frozen image tower (vlkit's own contrastive trainer).
VISION_RUNS = {
    "easy_vqa": dict(model="small-rn-64", data="easy_vqa", batch_size=64, max_steps=300, lr=1e-3,
                     warmup_steps=30, min_lr_ratio=0.02, weight_decay=0.1),
    "scene_captions": dict(model="small-rn-64", data="shapes", num_samples=20000, batch_size=64,
                           max_steps=600, lr=1e-3, warmup_steps=50, min_lr_ratio=0.02,
                           weight_decay=0.1),
}  # fmt: skip


def vision_checkpoint(task: str, out: Path, model: str | None = None) -> str:
    """Trains the task's CLIP once (reused when `OUT/vision_TASK` already holds it). Scene
    questions use the scene-caption tower: the images are the same. `model` replaces the
    preset of `VISION_RUNS` (same data and schedule); its run goes to `OUT/vision_TASK_MODEL`."""
    from vlkit.recipes.clip_run import train
    from vlkit.training.config import TrainConfig

    task = "scene_captions" if task == "scene_questions" else task
    settings = dict(VISION_RUNS[task])
    run = out / f"vision_{task}"
    if model is not None and model != settings["model"]:
        settings["model"] = model
        run = out / f"vision_{task}_{model}"
    latest = run / "checkpoints" / "latest"
    if not latest.is_file():
        # No `latest`: nothing or an unfinished run is there, which this run replaces.
        train(TrainConfig(**settings, out_dir=str(run), progress=False), overwrite=True)
    return str(run / "checkpoints" / latest.read_text().strip())


def rows_markdown(rows: list[dict]) -> str:
    head = (
        "| task | fusion | trainable params | fwd GFLOPs/sample | train GFLOPs/sample "
        "| train s | test metric |\n|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        metric = (
            f"accuracy {r['accuracy']:.4f}" if "accuracy" in r else f"CIDEr-D {r['cider_d']:.3f}"
        )
        if "accuracy_count" in r:  # scene questions: the hard types
            metric += f" (count {r['accuracy_count']:.3f}, spatial {r['accuracy_spatial']:.3f})"
        lines.append(
            f"| {r['task']} | {r['name']} | {r['trainable_parameters'] / 1e6:.2f} M "
            f"| {r['forward_gflops']:.4f} | {r['train_gflops']:.4f} | {r['train_seconds']:.0f} "
            f"| {metric} |"
        )
    return head + "\n".join(lines) + "\n"


def composed_rows(out: Path, kinds: list[str], vision: str) -> list[dict]:
    """Issue 12 item 5: `vlkit.recipes.composed_run` for each kind on the same frozen CLIP tower
    and the same pretrained Llama LM (trained once, by the first run; its tokenizer and chat
    template serve every kind), each with `full_run_config`'s schedule (the same 4,000 steps of 64:
    LLaVA's two stages; qformer / flamingo with the LM frozen). A kind whose
    `OUT/composed/KIND/summary.json` exists is not rerun."""
    from vlkit.recipes.composed_run import full_run_config, run_composed

    rows, language = [], ""
    for kind in kinds:
        run = out / "composed" / kind
        if (run / "summary.json").is_file():
            summary = json.loads((run / "summary.json").read_text())
        else:
            summary = run_composed(full_run_config(kind, vision, language), run)
        language = language or summary["config"]["language"] or str(run / "lm")
        stages = "two-stage, " if kind == "llava" else "LM frozen, "
        rows.append({**summary, "task": "easy_vqa", "name": f"{kind} ({stages}pretrained LM)"})
        print(f"composed {kind:9s} accuracy={summary['accuracy']:.4f} "
              f"train_s={summary['train_seconds']}")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/fusion_comparison")
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["easy_vqa", "scene_captions"],
        choices=["easy_vqa", "scene_captions", "scene_questions"],
    )
    parser.add_argument("--kinds", nargs="+", default=list(FUSION_KINDS))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-test", type=int, default=None, help="evaluate on the first N")
    parser.add_argument("--no-two-stage", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--vision-model", default=None, help="CLIP preset of the towers (default: VISION_RUNS')"
    )
    parser.add_argument(
        "--vision-tokens",
        default="final",
        help="tower tokens the connector reads: final, or a ResNet stage (layer2 / layer3)",
    )
    parser.add_argument(
        "--composed", action="store_true",
        help="instead: the composed runs (CLIP tower + pretrained Llama, recipes/composed_run.py)",
    )  # fmt: skip
    parser.add_argument("--composed-vision", default="runs/demo/model", help="its CLIP tower")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    started = time.perf_counter()
    if args.composed:
        kinds = [k for k in args.kinds if k in ("llava", "qformer", "flamingo")]
        rows = composed_rows(out, kinds, args.composed_vision)
        (out / "composed_results.json").write_text(json.dumps(rows, indent=2))
        table = rows_markdown(rows)
        (out / "composed_table.md").write_text(table)
        print(table + f"total {time.perf_counter() - started:.0f} s")
        return
    for task in args.tasks:
        vision = vision_checkpoint(task, out, args.vision_model)
        runs = [(kind, kind, 0) for kind in args.kinds]
        if not args.no_two_stage and "llava" in args.kinds:
            runs.append(("llava two-stage", "llava", args.steps // 4))
        for name, kind, stage1 in runs:
            recipe = VLMRecipe(
                kind=kind,
                task=task,
                vision=vision,
                vision_tokens=args.vision_tokens,
                steps=args.steps - stage1,
                connector_only_steps=stage1,
                batch_size=args.batch_size,
                max_length=24 if task == "easy_vqa" else 32,
                test_scenes=500,
                max_test=args.max_test,
                device=args.device,
            )
            run_dir = out / task / name.replace(" ", "_")
            summary = train_vlm(recipe, run_dir, overwrite=True)  # the table is regenerated
            summary["name"] = name
            rows.append(summary)
            metric = summary.get("accuracy", summary.get("cider_d"))
            print(f"{task:15s} {name:16s} metric={metric:.4f} train_s={summary['train_seconds']}")
            (out / "results.json").write_text(json.dumps(rows, indent=2))
    table = rows_markdown(rows)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    if torch.cuda.is_available() and args.device != "cpu":
        machine = torch.cuda.get_device_name()
    footer = (
        f"\n{args.steps} steps x batch {args.batch_size} per model on {machine}; "
        f"torch {torch.__version__}; total {time.perf_counter() - started:.0f} s.\n"
    )
    (out / "table.md").write_text(table + footer)
    print(table + footer)


if __name__ == "__main__":
    main()
