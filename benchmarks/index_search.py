"""Nearest-neighbour search: exact torch matmul + topk vs faiss flat, IVF and HNSW indexes.

What it measures, in one process on the same data: N unit vectors of dimension D (default
100,000 x 512, standard normal then L2-normalised; `--clustered` draws them around 1,000
random centres instead, closer to real embeddings, which cluster) and Q queries (default 1,000,
drawn the same way). For each method:

- build: seconds to make the index from the (N, D) array (`EmbeddingIndex.build`, which
  normalises, trains IVF's k-means and adds; for torch, the normalisation alone);
- queries/s: all Q queries in one batched call, best of `--repeats`;
- latency: median ms for one query at a time (web-app style), over the first 50 queries;
- recall@10: |top-10 found & exact top-10| / 10, averaged over the queries, against torch's
  exact matmul + topk.

IVF uses nlist = round(4 sqrt(N)) cells and is searched at several `nprobe` values; HNSW uses
M = 32 and several `ef_search` values. All faiss numbers go through `vlkit.inference.index.
EmbeddingIndex.search`, i.e. include building the `SearchHit` lists. On random (unclustered)
data approximate indexes are at their worst: there are no clusters for IVF cells or graph
neighbourhoods to exploit, so their recall here is a lower bound for real embeddings.

    python benchmarks/index_search.py --threads 1
    python benchmarks/index_search.py --n 20000 --queries 500 --json out.json
    python benchmarks/index_search.py --clustered --nprobe 4 16 64 --ef-search 32 128

Measured: see the table printed by the run and the numbers reported with it (machine named).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from machine import cpu_name

try:
    import vlkit  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vlkit.inference.index import EmbeddingIndex

K = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="indexed vectors")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--clustered", action="store_true", help="vectors around 1,000 centres")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128], help="IVF")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 256], help="HNSW")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="batched runs; the best counts")
    parser.add_argument("--threads", type=int, default=None, help="torch and faiss threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write JSON here")
    return parser.parse_args(argv)


def make_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) data and (Q, D) queries, unit length, float32."""
    generator = torch.Generator().manual_seed(args.seed)
    total = args.n + args.queries
    if args.clustered:
        centres = torch.nn.functional.normalize(torch.randn(1000, args.dim, generator=generator))
        assignment = torch.randint(0, 1000, (total,), generator=generator)
        # Noise of norm ~0.7 around unit centres: points have cosine ~0.8 to their centre.
        noise = torch.randn(total, args.dim, generator=generator) * (0.7 / math.sqrt(args.dim))
        vectors = centres[assignment] + noise
    else:
        vectors = torch.randn(total, args.dim, generator=generator)
    vectors = torch.nn.functional.normalize(vectors, dim=-1)
    return vectors[: args.n].contiguous(), vectors[args.n :].contiguous()


def exact_topk(data: torch.Tensor, queries: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """(Q, K) positions of the exact top-K by inner product, queries in chunks (bounded memory)."""
    return torch.cat([(queries[i : i + chunk] @ data.T).topk(K, dim=1).indices
                      for i in range(0, len(queries), chunk)])  # fmt: skip


def timed(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, result = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def latency_ms(search_one: Callable[[torch.Tensor], Any], queries: torch.Tensor) -> float:
    times = []
    for query in queries[:50]:
        start = time.perf_counter()
        search_one(query)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def recall_at_k(found: list[list[int]], exact: torch.Tensor) -> float:
    hits = sum(len(set(row) & set(truth)) for row, truth in zip(found, exact.tolist(), strict=True))
    return hits / (K * len(found))


def measure_index(
    index: EmbeddingIndex, queries: torch.Tensor, exact: torch.Tensor, repeats: int, **params: Any
) -> dict[str, Any]:
    seconds, hits = timed(lambda: index.search(queries, K, **params), repeats)
    found = [[hit.position for hit in row] for row in hits]
    return {
        "queries_per_s": len(queries) / seconds,
        "latency_ms": latency_ms(lambda q: index.search(q, K, **params), queries),
        "recall_at_10": recall_at_k(found, exact),
    }


def machine() -> dict[str, Any]:
    import faiss

    return {
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import faiss

    data, queries = make_data(args)
    names = [str(i) for i in range(len(data))]
    rows: list[dict[str, Any]] = []

    start = time.perf_counter()
    normalised = torch.nn.functional.normalize(data, dim=-1)
    build = time.perf_counter() - start
    seconds, exact = timed(lambda: exact_topk(normalised, queries), args.repeats)
    rows.append({"method": "torch matmul+topk (exact)", "build_s": build,
                 "queries_per_s": len(queries) / seconds,
                 "latency_ms": latency_ms(lambda q: exact_topk(normalised, q[None]), queries),
                 "recall_at_10": 1.0})  # fmt: skip
    print(f"torch done ({rows[-1]['queries_per_s']:.0f} q/s)", file=sys.stderr)

    start = time.perf_counter()
    index = EmbeddingIndex.build(data, names, kind="flat")
    build = time.perf_counter() - start
    rows.append({"method": "faiss flat (exact)", "build_s": build,
                 **measure_index(index, queries, exact, args.repeats)})  # fmt: skip
    # faiss only uses BLAS (sgemm) for exhaustive search from `distance_compute_blas_threshold`
    # queries on (128,000 in faiss 1.15; 20 in older releases); below, a per-pair SIMD loop.
    # A process-wide setting, so vlkit leaves it alone; this row shows what it is worth.
    default_threshold = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 20
    rows.append({"method": "faiss flat (exact), BLAS from 20 queries", "build_s": build,
                 **measure_index(index, queries, exact, args.repeats)})  # fmt: skip
    faiss.cvar.distance_compute_blas_threshold = default_threshold
    del index
    print("flat done", file=sys.stderr)

    start = time.perf_counter()
    index = EmbeddingIndex.build(data, names, kind="ivf")
    build = time.perf_counter() - start
    for nprobe in args.nprobe:
        measured = measure_index(index, queries, exact, args.repeats, nprobe=nprobe)
        rows.append({"method": f"faiss IVF nlist={index.nlist} nprobe={nprobe}",
                     "build_s": build, **measured})  # fmt: skip
    del index
    print("ivf done", file=sys.stderr)

    start = time.perf_counter()
    index = EmbeddingIndex.build(data, names, kind="hnsw", hnsw_m=args.hnsw_m)
    build = time.perf_counter() - start
    for ef in args.ef_search:
        measured = measure_index(index, queries, exact, args.repeats, ef_search=ef)
        rows.append({"method": f"faiss HNSW M={args.hnsw_m} ef_search={ef}",
                     "build_s": build, **measured})  # fmt: skip
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | build (s) | queries/s (batch) | latency (ms, 1 query) | recall@10 |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for row in rows:
        lines.append(f"| {row['method']} | {row['build_s']:.2f} | {row['queries_per_s']:,.0f} | "
                     f"{row['latency_ms']:.2f} | {row['recall_at_10']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import faiss

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    rows = run(args)
    info = machine()
    data = "clustered" if args.clustered else "random"
    print(f"\n{args.n:,} x {args.dim} {data} unit vectors, {args.queries:,} queries, k={K}; "
          f"{info['cpu']}, {info['torch_threads']} torch / {info['faiss_threads']} faiss threads, "
          f"faiss {info['faiss']}, torch {info['torch']}\n")  # fmt: skip
    print(markdown(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings = {key: (str(value) if isinstance(value, Path) else value)
                    for key, value in vars(args).items()}  # fmt: skip
        payload = {"settings": settings, "machine": info, "results": rows}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
