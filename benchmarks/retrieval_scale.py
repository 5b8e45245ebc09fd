"""Wall time and peak memory of blockwise retrieval metrics at scale, vs a dense baseline.

What it measures: `vlkit.evaluation.retrieval_metrics` (image->text and text->image R@1/5/10,
mean and median rank; the score matrix is processed in blocks and never materialised) on
synthetic L2-normalised embeddings with COCO-like structure (every image has >= 1 caption,
`texts / images` captions on average; caption = normalise(image + noise)). For comparison, a
DENSE baseline materialises the full (texts x images) score matrix, as open_clip's
`get_clip_metrics` and CLIP_benchmark's retrieval evaluation do, at a size where it fits, and the
blockwise result is run at the same size; the two must agree (identical in practice; exit
status 1 if any metric differs by more than 1e-3).

Every measurement runs in its own subprocess, so that its peak RSS (`ru_maxrss`) is its own:
reported are the RSS after importing torch (`base`), after generating the embeddings (`data`),
the peak over the whole process (`peak`), and `peak - data` (the metric's working memory). On
CUDA, `torch.cuda.max_memory_allocated` too. Throughput is reported as score pairs per second;
the time for the full 1,000,000 x 200,000 problem is extrapolated from it when not run (the cost
is linear in texts x images: one matrix product and two comparisons per pair).

    python benchmarks/retrieval_scale.py                   # 100k captions x 20k images + dense at 25k x 5k
    python benchmarks/retrieval_scale.py --full --device cuda  # 1,000,000 x 200,000 (H200: 5 s)
    python benchmarks/retrieval_scale.py --texts 400000 --images 80000
    python benchmarks/retrieval_scale.py --full --device cuda --json out.json

Measured (dim 256, fp32, blockwise; peak RSS includes the 1.2 GiB of embeddings at full size):

    1,000,000 x 200,000  H200 (cuda)           5.0 s   40 Gpairs/s   peak RSS 2.2 GiB, CUDA 2.3 GiB
    1,000,000 x 200,000  Xeon, 16 threads    135 s    1.5 Gpairs/s  peak RSS 1.9 GiB
      400,000 x  80,000  2-core shared VM    318 s    0.10 Gpairs/s peak RSS 1.3 GiB
                         -> full size extrapolated: ~33 min there; ~10 min on 2 quiet Xeon
                            threads (0.35 Gpairs/s measured at 100,000 x 20,000)
    dense baseline       25,000 x 5,000 CPU: +1.5 GiB over the data (blockwise: +0.17 GiB);
                         100,000 x 20,000 CUDA: 25 GiB on the GPU (blockwise: 2.1 GiB);
                         1,000,000 x 200,000 would need a 745 GiB score matrix.

Options: --dim (256), --dense-texts / --dense-images (dense baseline size; 0 skips it),
--chunk-size / --image-chunk-size (blocks), --storage-dtype fp32|fp16 (how the embeddings are
held in memory), --noise, --threads, --seed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

try:
    import vlkit  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vlkit.evaluation.retrieval import retrieval_metrics, summarize_ranks

FULL = (1_000_000, 200_000)
STORAGE = {"fp32": torch.float32, "fp16": torch.float16}


def _rss_mib() -> float:
    """Current resident set size (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return _peak_rss_mib()


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (
        peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    )  # bytes on macOS, KiB on Linux


def make_data(n_txt: int, n_img: int, dim: int, noise: float, seed: int, dtype: torch.dtype):
    """Unit image embeddings, caption image ids (every image used), captions = normalise(image + noise)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.empty(n_img, dim, dtype=dtype)
    step = 65536
    for s in range(0, n_img, step):
        block = torch.randn(min(step, n_img - s), dim, generator=g)
        images[s : s + step] = torch.nn.functional.normalize(block, dim=-1).to(dtype)
    base = torch.arange(n_img).repeat(max(1, n_txt // n_img))[:n_txt]
    extra = torch.randint(0, n_img, (n_txt - base.numel(),), generator=g)
    ids = torch.cat([base, extra])
    ids = ids[torch.randperm(n_txt, generator=g)]
    texts = torch.empty(n_txt, dim, dtype=dtype)
    for s in range(0, n_txt, step):
        e = min(s + step, n_txt)
        block = images[ids[s:e]].float() + noise / dim**0.5 * torch.randn(e - s, dim, generator=g)
        texts[s:e] = torch.nn.functional.normalize(block, dim=-1).to(dtype)
    return images, texts, ids


@torch.no_grad()
def dense_metrics(
    images: torch.Tensor, texts: torch.Tensor, ids: torch.Tensor, device: str
) -> dict[str, float]:
    """Baseline: the whole (texts x images) score matrix in memory, ranks by comparison."""
    img = images.to(device=device, dtype=torch.float32)
    txt = texts.to(device=device, dtype=torch.float32)
    ids_d = ids.to(device)
    scores = txt @ img.T  # (n_txt, n_img): the memory the blockwise version avoids
    pos = scores[torch.arange(len(ids_d), device=device), ids_d]
    t2i = (scores > pos[:, None]).sum(dim=1) + 1
    best = torch.full((img.shape[0],), -torch.inf, device=device).scatter_reduce(
        0, ids_d, pos, reduce="amax"
    )
    i2t = (scores > best[None, :]).sum(dim=0) + 1
    out: dict[str, float] = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for key, value in summarize_ranks(ranks.cpu()).items():
            out[f"{name}_{key}"] = value
    return out


def worker(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    rss_base = _rss_mib()
    t0 = time.perf_counter()
    images, texts, ids = make_data(
        args.texts, args.images, args.dim, args.noise, args.seed, STORAGE[args.storage_dtype]
    )
    gen_s = time.perf_counter() - t0
    rss_data = _rss_mib()
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    if args.worker == "dense":
        metrics = dense_metrics(images, texts, ids, args.device)
    else:
        metrics = retrieval_metrics(
            images,
            texts,
            ids,
            chunk_size=args.chunk_size,
            image_chunk_size=args.image_chunk_size,
            device=args.device,
        )
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    pairs = args.texts * args.images
    return {
        "method": args.worker,
        "texts": args.texts,
        "images": args.images,
        "dim": args.dim,
        "device": args.device,
        "storage_dtype": args.storage_dtype,
        "threads": torch.get_num_threads(),
        "wall_s": wall,
        "datagen_s": gen_s,
        "pairs_per_s": pairs / wall,
        "rss_base_mib": rss_base,
        "rss_data_mib": rss_data,
        "peak_rss_mib": _peak_rss_mib(),
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "metrics": metrics,
    }


def run_worker(
    method: str, n_txt: int, n_img: int, args: argparse.Namespace
) -> dict[str, Any] | None:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--texts",
        str(n_txt),
        "--images",
        str(n_img),
    ]
    for name in (
        "dim",
        "device",
        "storage_dtype",
        "noise",
        "seed",
        "threads",
        "chunk_size",
        "image_chunk_size",
    ):
        value = getattr(args, name)
        if value is not None:
            cmd += [f"--{name.replace('_', '-')}", str(value)]
    print(f"... {method} {n_txt:,} x {n_img:,} on {args.device}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"    failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict[str, Any]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = f"{names[0]} x {len(names)}" if names else info["cpu"]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def fmt(row: dict[str, Any]) -> str:
    cuda = f" cuda_peak={row['cuda_peak_mib']:8.0f}MiB" if row["cuda_peak_mib"] is not None else ""
    m = row["metrics"]
    return (
        f"{row['method']:8s} {row['texts']:>9,} x {row['images']:>7,} {row['device']:5s} "
        f"{row['wall_s']:8.2f}s {row['pairs_per_s'] / 1e9:7.3f} Gpairs/s  "
        f"rss base={row['rss_base_mib']:6.0f} data={row['rss_data_mib']:6.0f} peak={row['peak_rss_mib']:6.0f} "
        f"(+{row['peak_rss_mib'] - row['rss_data_mib']:.0f}) MiB{cuda}  "
        f"t2i R@1={m['t2i_r1']:.4f} i2t R@1={m['i2t_r1']:.4f}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="1,000,000 captions x 200,000 images")
    p.add_argument("--texts", type=int, default=100_000)
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--dense-texts", type=int, default=25_000, help="dense baseline size (0: skip)")
    p.add_argument("--dense-images", type=int, default=5_000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--storage-dtype", choices=sorted(STORAGE), default="fp32")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--image-chunk-size", type=int, default=None)
    p.add_argument(
        "--noise", type=float, default=4.0, help="caption noise norm (images are unit vectors)"
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker", choices=["chunked", "dense"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.full:
        args.texts, args.images = FULL

    print(json.dumps(machine()))
    rows, ok = [], True
    if args.dense_texts and args.dense_images:
        dense = run_worker("dense", args.dense_texts, args.dense_images, args)
        same = run_worker("chunked", args.dense_texts, args.dense_images, args)
        rows += [r for r in (dense, same) if r]
        if dense and same:
            # Identical unless a negative scores within float32 rounding of a positive: the
            # blockwise positive score is an elementwise dot product, the dense one a GEMM entry.
            diff = max(abs(dense["metrics"][k] - same["metrics"][k]) for k in dense["metrics"])
            ok &= diff <= 1e-3
            print(
                f"    dense vs blockwise: identical={dense['metrics'] == same['metrics']}, max |diff| = {diff:.2e}"
            )
    big = run_worker("chunked", args.texts, args.images, args)
    if big:
        rows.append(big)
    else:
        ok = False
    print()
    for row in rows:
        print(fmt(row))
    if big:
        full_pairs = FULL[0] * FULL[1]
        if args.texts * args.images != full_pairs:
            est = full_pairs / big["pairs_per_s"]
            print(
                f"extrapolated blockwise time for {FULL[0]:,} x {FULL[1]:,} at this throughput: "
                f"{est:.0f} s ({est / 60:.1f} min); embeddings would take "
                f"{sum(FULL) * args.dim * STORAGE[args.storage_dtype].itemsize / 2**20:.0f} MiB"
            )
    if rows and rows[0]["method"] == "dense":
        d = rows[0]
        print(
            f"dense score matrix at {d['texts']:,} x {d['images']:,}: "
            f"{d['texts'] * d['images'] * 4 / 2**20:.0f} MiB; at {FULL[0]:,} x {FULL[1]:,}: "
            f"{FULL[0] * FULL[1] * 4 / 2**30:.0f} GiB"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows, "ok": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
