"""A planted correlation, found by the audit and reduced by balanced sampling and debiasing.

    nice -n 5 python benchmarks/bias_demo.py --out runs/bias_demo   # 6.5 min on 2 busy CPU cores

The data (written as images + JSONL, the `data.source=folder` format): one red or blue circle or
square per 64x64 image, at a random cell and size. In the training split the colour predicts the
shape: 90% of red objects are circles and 90% of blue ones squares. In half of all images the
object is blurred (Gaussian, radius 6) so that its shape cannot be seen but its colour can; the
caption still names the shape ("a photo of a circle", or "a photo of a red circle"). The test
split is balanced: every (colour, shape, blurred) cell is equally likely.

What a model should do on a blurred object is guess from what it can see. A model trained on
the correlated data learns the prior "red -> circle"; on the balanced test split that is a bias:
the prompt "a photo of a circle" is associated with red images far more often than with blue
ones, although both colours hold the same share of circles. The script trains the demo's CLIP
(`small-rn-64`) twice with the same seed, steps and schedule, plain and with
`data.balance_by=group` (group = "<colour> <shape>", so every combination is drawn equally
often), and audits both with `vlkit audit`'s recipe over the test images (attribute: colour;
prompts: the two shapes), the plain model also with the prompts debiased along
"a photo of a red circle|a photo of a blue circle;a photo of a red square|a photo of a blue square"
(Chuang et al. 2023: the orthogonal projection of their §3.1 and the calibrated one of §3.2). It
reports the association gap of the "circle" prompt between red and
blue, MaxSkew@k and NDKL of the rankings, and the zero-shot shape accuracy on sharp and on
blurred images, as a table in `OUT/results.md` and `OUT/results.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import ImageFilter

from vlkit.data.datasets.shape_scenes import GRID, SceneObject, render_scene
from vlkit.recipes.bias_audit import AuditConfig, run_audit
from vlkit.recipes.clip_run import train
from vlkit.training.config import DataConfig, OptimConfig, TrainConfig

COLORS = ("red", "blue")
SHAPES = ("circle", "square")  # red goes with circle, blue with square in training
PROMPTS = ("a photo of a circle", "a photo of a square")
DEBIAS = (("a photo of a red circle", "a photo of a blue circle"),
          ("a photo of a red square", "a photo of a blue square"))  # fmt: skip
_RADIUS = {"small": 0.3, "large": 0.45}  # of a grid cell


def write_split(root: Path, count: int, correlation: float | None, seed: int) -> Path:
    """Writes `count` images and `data.jsonl` (image, caption list, color, shape, group,
    blurred); `correlation` None: colour and shape independent (the balanced test split)."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    cell = 64 / GRID
    with open(root / "data.jsonl", "w") as lines:
        for index in range(count):
            color = rng.choice(COLORS)
            if correlation is None:
                shape = rng.choice(SHAPES)
            else:
                paired = SHAPES[COLORS.index(color)]
                shape = paired if rng.random() < correlation else SHAPES[1 - SHAPES.index(paired)]
            size = rng.choice(("small", "large"))
            radius = _RADIUS[size] * cell
            row, col = divmod(rng.randrange(GRID * GRID), GRID)
            slack = max(0.0, cell / 2 - radius - 1)
            x = (col + 0.5) * cell + rng.uniform(-slack, slack)
            y = (row + 0.5) * cell + rng.uniform(-slack, slack)
            image = render_scene([SceneObject(shape, color, size, row, col, x, y, radius, 0.5)])
            blurred = rng.random() < 0.5
            if blurred:  # the colour stays visible, the shape does not
                image = image.filter(ImageFilter.GaussianBlur(6))
            name = f"images/{index:05d}.png"
            image.save(root / name)
            record = {"image": name, "caption": [f"a photo of a {shape}",
                                                 f"a photo of a {color} {shape}"],
                      "color": color, "shape": shape, "group": f"{color} {shape}",
                      "blurred": "blurred" if blurred else "sharp"}  # fmt: skip
            lines.write(json.dumps(record) + "\n")
    return root / "data.jsonl"


def train_model(data: Path, out: Path, steps: int, balance_by: str | None, seed: int) -> Path:
    """The demo's CLIP recipe on the folder data; returns the final checkpoint."""
    config = TrainConfig(
        model="small-rn-64", seed=seed, device="cpu", out_dir=str(out), progress=True,
        data=DataConfig(source="folder", root=str(data.parent), annotations=str(data),
                        balance_by=balance_by),
        optim=OptimConfig(batch_size=64, max_steps=steps, lr=1e-3, min_lr_ratio=0.02,
                          warmup_steps=min(30, steps // 4), weight_decay=0.1),
    )  # fmt: skip
    train(config, overwrite=True)
    return out / "checkpoints" / f"step_{steps:08d}"


def _cell_accuracy(prompts: dict[str, Any]) -> dict[str, float]:
    """Zero-shot shape accuracy per "<colour> <shape> <sharp|blurred>" cell: the rate of the
    correct prompt among the cell's images."""
    accuracy = {}
    for cell in prompts[PROMPTS[0]]["association"]:
        shape = cell.split()[1]
        accuracy[cell] = prompts[PROMPTS[SHAPES.index(shape)]]["association"][cell]["rate"]
    sharp = [v for k, v in accuracy.items() if k.endswith("sharp")]
    blurred = [v for k, v in accuracy.items() if k.endswith("blurred")]
    return {"sharp_accuracy": sum(sharp) / len(sharp),
            "blurred_accuracy": sum(blurred) / len(blurred),
            "worst_cell_accuracy": min(accuracy.values())}  # fmt: skip


def shape_accuracy(model: Path, test: Path, out: Path, debias: bool) -> dict[str, dict]:
    """Shape accuracies (`_cell_accuracy`) from an audit over the combined cell column, for the
    original prompts and, with `debias`, the debiased ones."""
    cells = out.parent / "test_cells.jsonl"
    rows = [json.loads(line) for line in test.read_text().splitlines()]
    cells.write_text("".join(json.dumps({**r, "cell": f"{r['group']} {r['blurred']}"}) + "\n"
                             for r in rows))  # fmt: skip
    config = AuditConfig(prompts=PROMPTS, attribute="cell", root=str(test.parent), bootstrap=0,
                         ks=(10,), debias=DEBIAS if debias else ())  # fmt: skip
    audit = run_audit(model, cells, out, config, overwrite=True)
    return {part: _cell_accuracy(audit[part]["prompts"])
            for part in ("original", "debiased") if part in audit}  # fmt: skip


def _row(audit: dict[str, Any], ks: list[int]) -> dict[str, Any]:
    circle = audit["prompts"][PROMPTS[0]]
    rates = circle["association"]
    row = {
        "circle_rate_red": rates["red"]["rate"],
        "circle_rate_blue": rates["blue"]["rate"],
        **{f"circle_rate_{g}_interval": (rates[g]["low"], rates[g]["high"]) for g in COLORS},
        "association_gap": circle["association_gap"],
        "ndkl": audit["mean_ndkl"],
    }
    row.update({f"max_skew_at_{k}": audit[f"mean_max_skew_at_{k}"] for k in ks})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bias_demo")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--correlation", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: robust when busy)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    train_data = write_split(out / "data" / "train", args.train_size, args.correlation, args.seed)
    test_data = write_split(out / "data" / "test", args.test_size, None, args.seed + 1)
    timings["data"] = time.perf_counter() - start
    ks = [k for k in (100, 250, 500) if k <= args.test_size] or [args.test_size]
    rows: dict[str, dict[str, Any]] = {}
    for name, balance in (("plain", None), ("balanced (data.balance_by=group)", "group")):
        tick = time.perf_counter()
        run = out / ("run_balanced" if balance else "run_plain")
        checkpoint = train_model(train_data, run, args.steps, balance, args.seed)
        timings[f"train {name}"] = time.perf_counter() - tick
        tick = time.perf_counter()
        config = AuditConfig(prompts=PROMPTS, attribute="color", root=str(test_data.parent),
                             ks=tuple(ks), bootstrap=200, debias=() if balance else DEBIAS,
                             seed=args.seed)  # fmt: skip
        audit = run_audit(checkpoint, test_data, run / "audit", config, overwrite=True)
        accuracy = shape_accuracy(checkpoint, test_data, run / "accuracy", debias=not balance)
        rows[name] = {**_row(audit["original"], ks), **accuracy["original"]}
        if not balance:  # debiasing changes the prompts only: the same model, audited again
            rows["plain + debiased prompts (Chuang et al. §3.1)"] = {
                **_row(audit["debiased"], ks), **accuracy["debiased"]}  # fmt: skip
            # §3.2: the subspace of the circle pair only, the square pair equalised.
            config = replace(config, debias=DEBIAS[:1], equalize=DEBIAS[1:])
            calibrated = run_audit(checkpoint, test_data, run / "audit_calibrated", config,
                                   overwrite=True)  # fmt: skip
            rows["plain + calibrated projection (§3.2)"] = _row(calibrated["debiased"], ks)
        timings[f"audit {name}"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - start
    result = {"rows": rows, "seconds": timings, "steps": args.steps,
              "correlation": args.correlation, "machine": f"{platform.machine()}, "
              f"{os.cpu_count()} cores, torch {torch.__version__}"}  # fmt: skip
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    columns = ["circle_rate_red", "circle_rate_blue", "association_gap",
               *[f"max_skew_at_{k}" for k in ks], "ndkl", "sharp_accuracy", "blurred_accuracy",
               "worst_cell_accuracy"]  # fmt: skip
    lines = ["| model | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for name, row in rows.items():
        cells = [f"{row[c]:.3f}" if c in row else "-" for c in columns]
        for i, color in enumerate(COLORS):  # the rates with their 95% Wilson intervals
            low, high = row[f"circle_rate_{color}_interval"]
            cells[i] += f" [{low:.2f}, {high:.2f}]"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n")
    print(table)
    print(json.dumps(timings, indent=1))


if __name__ == "__main__":
    main()
