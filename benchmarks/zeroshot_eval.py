"""Zero-shot evaluation speed: `vlkit benchmark` vs `clip_benchmark eval`, same model and data.

    python benchmarks/zeroshot_eval.py [--arch ViT-B-32] [--images 512] [--batch-size 64]
        [--workers 2] [--rounds 2] [--append benchmarks/RESULTS.md]

What it measures: images/s of a whole zero-shot CIFAR-10 run, data loading included (decode the
CIFAR pickles, transform, encode, classify; the 10 x 18 prompt classifier is built inside the
timed run too), for both tools on the same randomly initialised open_clip model (`--arch`, no
weights are downloaded: open_clip's init with seed 0, saved once as open_clip_config.json +
safetensors, which vlkit loads and clip_benchmark loads as `--pretrained FILE`) and the same
CIFAR-10-format test set of `--images` smooth random 32x32 images. Both run in this process
through their CLI entry points (`vlkit.cli.main.main`, `clip_benchmark.cli.main`), one after
the other, `--rounds` times (best round reported), with the same batch size and worker count,
fp32 (clip_benchmark `--no_amp`: its default autocast is bf16 on CPU, which changes the
numbers). The metrics of both must be identical (exit status 1 otherwise). Besides wall-clock
seconds it reports CPU seconds (this process's threads plus the DataLoader workers it reaped),
the fairer measure on a machine shared with other jobs, where wall-clock time mostly measures
the neighbours.

clip_benchmark needs two patches to read the fixture under numpy 2 (tests/test_benchmark_cli.py
explains them): torchvision's MD5 check of the CIFAR files, and `accuracy`'s float() of an array.
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402


def _fixture(root: Path, n: int) -> None:
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = np.stack([np.array(Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
                                .resize((32, 32), Image.BILINEAR)) for _ in range(n)])  # fmt: skip
    batch = {"data": images.transpose(0, 3, 1, 2).reshape(n, -1),
             "labels": [int(x) for x in rng.integers(0, 10, n)]}  # fmt: skip
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch))
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def _model(root: Path, arch: str) -> tuple[Path, Path]:
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cfg = open_clip.get_model_config(arch)
    model = open_clip.model.CLIP(**cfg).eval()
    directory = root / "model"
    directory.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              directory / "open_clip_model.safetensors")  # fmt: skip
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    return directory, directory / "open_clip_model.safetensors"


def _patch_clip_benchmark() -> None:
    import torchvision.datasets.cifar
    from clip_benchmark.metrics import zeroshot_classification

    torchvision.datasets.cifar.check_integrity = lambda *a, **k: True
    torchvision.datasets.CIFAR10._check_integrity = lambda self: True

    def accuracy(output, target, topk=(1,)):
        pred = output.topk(max(topk), 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum(0).item() / len(target) for k in topk]

    zeroshot_classification.accuracy = accuracy


def run_vlkit(model_dir: Path, data: Path, out: Path, args) -> dict:
    from vlkit.cli.main import main

    argv = ["benchmark", "--model", str(model_dir), "--tasks", "cifar10", "--data-root",
            str(data), "--out", str(out), "--batch-size", str(args.batch_size), "--workers",
            str(args.workers), "--device", args.device, "--no-progress", "--overwrite"]  # fmt: skip
    if main(argv) != 0:
        raise SystemExit("vlkit benchmark failed")
    return json.loads((out / "results.jsonl").read_text().splitlines()[-1])["metrics"]


def run_clip_benchmark(arch: str, weights: Path, data: Path, out: Path, args) -> dict:
    from clip_benchmark import cli

    sys.argv = ["clip_benchmark", "eval", "--dataset", "cifar10", "--dataset_root",
                str(data / "cifar10"), "--model", arch, "--pretrained", str(weights),
                "--output", str(out), "--batch_size", str(args.batch_size), "--num_workers",
                str(args.workers), "--no_amp", "--quiet"]  # fmt: skip
    cli.main()
    return json.loads(out.read_text())["metrics"]


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its reaped children (DataLoader workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip model config (random init)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (clip_benchmark picks CUDA "
                        "whenever it is available)")  # fmt: skip
    parser.add_argument("--append", default=None, help="append the table to this Markdown file")
    args = parser.parse_args()
    _patch_clip_benchmark()
    root = Path(tempfile.mkdtemp(prefix="zeroshot_eval_"))
    _fixture(root, args.images)
    model_dir, weights = _model(root, args.arch)
    times: dict[str, list[float]] = {"vlkit benchmark": [], "clip_benchmark eval": []}
    cpu_times: dict[str, list[float]] = {name: [] for name in times}
    metrics = {}
    for round_ in range(args.rounds):
        order = list(times) if round_ % 2 == 0 else list(reversed(times))
        for name in order:
            start, cpu_start = time.perf_counter(), _cpu_seconds()
            if name == "vlkit benchmark":
                metrics[name] = run_vlkit(model_dir, root, root / "vlkit_out", args)
            else:
                metrics[name] = run_clip_benchmark(args.arch, weights, root, root / "cb.json", args)
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(_cpu_seconds() - cpu_start)
    same = all(
        metrics["vlkit benchmark"][k] == v or (v != v and metrics["vlkit benchmark"][k] is None)
        for k, v in metrics["clip_benchmark eval"].items()
    )
    base = min(times["clip_benchmark eval"])
    cpu_base = min(cpu_times["clip_benchmark eval"])
    lines = [
        f"`python benchmarks/zeroshot_eval.py --arch {args.arch} --images {args.images} "
        f"--batch-size {args.batch_size} --workers {args.workers} --device {args.device}`; "
        f"{cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads.",
        "",
        "| tool | best run s | images/s | speed-up | CPU s | speed-up (CPU) | acc1 | acc5 "
        "| mean per-class recall |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in times.items():
        m = metrics[name]
        lines.append(f"| {name} | {min(runs):.2f} | {args.images / min(runs):.1f} | "
                     f"{base / min(runs):.2f}x | {min(cpu_times[name]):.2f} | "
                     f"{cpu_base / min(cpu_times[name]):.2f}x | {m['acc1']} | {m['acc5']} | "
                     f"{m['mean_per_class_recall']} |")  # fmt: skip
    lines += ["", f"Metrics identical: {'yes' if same else 'NO'}."]
    print("\n".join(lines))
    if args.append:
        with open(args.append, "a") as stream:
            stream.write("\n## Zero-shot evaluation speed (`benchmarks/zeroshot_eval.py`)\n\n")
            stream.write("\n".join(lines) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
