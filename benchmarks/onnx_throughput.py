"""Image- and text-encoding throughput of vlkit torch eager vs onnxruntime, same model, on CPU.

What it measures: items/s (and ms/batch) of `CLIP.encode_image` / `CLIP.encode_text` (torch eager,
fp32, `inference_mode`) and of the `OnnxCLIP` encoders that `vlkit.inference.export_onnx` writes
for the same randomly initialised model (default preset clip-vit-b-32), on the same inputs, in one
process. Both return L2-normalised embeddings. Before timing, the outputs are compared (max abs
diff, must be < 1e-4). After a warm-up the two implementations alternate, round after round (the
order rotates every round), and the median round is reported, with the fastest round (`min ms`,
least disturbed by other processes). torch and onnxruntime get the same number of threads.

Run from the repository root (needs the `export` extra: onnx, onnxruntime, onnxscript):

    python benchmarks/onnx_throughput.py                          # clip-vit-b-32, 32 images, 256 texts
    python benchmarks/onnx_throughput.py --preset tiny --threads 1 --rounds 3
    python benchmarks/onnx_throughput.py --threads 4 --json onnx_cpu.json

Exit status: 0 on success, 1 if torch and onnxruntime disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import cpu_name

try:
    import vlkit
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import vlkit

from vlkit.inference import OnnxCLIP, export_onnx

TOLERANCE = 1e-4  # fp32 max abs diff of the normalised embeddings


@dataclass
class Row:
    """One measured (task, implementation) pair."""

    task: str  # "image" or "text"
    implementation: str  # "torch eager" or "onnxruntime"
    batch_size: int
    ms_per_batch: float = 0.0  # median over the rounds
    ms_per_batch_min: float = 0.0
    items_per_s: float = 0.0
    ratio_vs_torch: float = 1.0  # items/s relative to torch eager on the same task
    max_abs_diff: float = 0.0  # vs torch eager
    ms_per_batch_rounds: list[float] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="clip-vit-b-32", help="vlkit preset (random weights)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    parser.add_argument("--text-batch-size", type=int, default=256, help="texts per batch")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's default")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per implementation")
    parser.add_argument("--iters", type=int, default=1, help="batches per timed round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per implementation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    for name in ("batch_size", "text_batch_size", "rounds", "iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def machine_info() -> dict[str, Any]:
    """The hardware and software the numbers were measured on."""
    import onnxruntime

    cpu = cpu_name()
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "vlkit": vlkit.__version__,
        "platform": platform.platform(),
    }


def timed_round(fn: Callable[[], Any], iters: int) -> float:
    """Milliseconds per batch over `iters` calls."""
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) * 1e3 / iters


def measure(
    task: str,
    batch_size: int,
    implementations: dict[str, Callable[[], np.ndarray]],
    args: argparse.Namespace,
) -> list[Row]:
    """Checks the outputs agree, then times the implementations interleaved."""
    outputs = {name: fn() for name, fn in implementations.items()}
    reference = outputs["torch eager"]
    rows = {
        name: Row(task, name, batch_size, max_abs_diff=float(np.abs(out - reference).max()))
        for name, out in outputs.items()
    }
    for fn in implementations.values():
        for _ in range(args.warmup):
            fn()
    names = list(implementations)
    for index in range(args.rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            rows[name].ms_per_batch_rounds.append(timed_round(implementations[name], args.iters))
    for row in rows.values():
        row.ms_per_batch = statistics.median(row.ms_per_batch_rounds)
        row.ms_per_batch_min = min(row.ms_per_batch_rounds)
        row.items_per_s = batch_size * 1e3 / row.ms_per_batch
    for row in rows.values():
        row.ratio_vs_torch = row.items_per_s / rows["torch eager"].items_per_s
    return list(rows.values())


def format_table(rows: list[Row]) -> str:
    lines = [
        "| task | implementation | batch | ms/batch | min ms | items/s | vs torch | max abs diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.task} | {r.implementation} | {r.batch_size} | {r.ms_per_batch:.1f} | "
            f"{r.ms_per_batch_min:.1f} | {r.items_per_s:.1f} | {r.ratio_vs_torch:.2f}x | "
            f"{r.max_abs_diff:.2e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(args.seed)
    info = machine_info()
    print(
        f"machine: {info['cpu']} ({threads} threads) | torch {info['torch']} | "
        f"onnxruntime {info['onnxruntime']} | python {info['python']}"
    )
    model = vlkit.create_model(args.preset).eval()
    config = model.config
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        report = export_onnx(model, directory)
        export_s = time.perf_counter() - start
        print(f"exported and verified in {export_s:.1f}s (opset {report.opset})")
        onnx_model = OnnxCLIP.load(directory, num_threads=threads)
    size = config.vision.image_size
    pixels = torch.randn(args.batch_size, 3, size, size)
    ids = torch.randint(
        0, config.text.vocab_size, (args.text_batch_size, config.text.context_length)
    )
    pixels_np, ids_np = pixels.numpy(), ids.numpy()

    def torch_image() -> np.ndarray:
        with torch.inference_mode():
            return model.encode_image(pixels, normalize=True).numpy()

    def torch_text() -> np.ndarray:
        with torch.inference_mode():
            return model.encode_text(ids, normalize=True).numpy()

    rows = measure(
        "image",
        args.batch_size,
        {"torch eager": torch_image, "onnxruntime": lambda: onnx_model.encode_image(pixels_np)},
        args,
    )
    rows += measure(
        "text",
        args.text_batch_size,
        {"torch eager": torch_text, "onnxruntime": lambda: onnx_model.encode_text(ids_np)},
        args,
    )
    print(
        f"\n{args.preset}, fp32, CPU, {threads} threads, median of {args.rounds} rounds "
        f"x {args.iters} batches\n"
    )
    print(format_table(rows))
    if args.json:
        result = {
            "machine": info,
            "args": vars(args),
            "export": {"seconds": export_s, **report.to_dict()},
            "rows": [asdict(r) for r in rows],
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    worst = max(r.max_abs_diff for r in rows)
    if not worst < TOLERANCE:
        print(f"FAILED: torch and onnxruntime differ by {worst:.3g} (> {TOLERANCE:g})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
