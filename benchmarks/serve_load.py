"""A short load test of `vlkit serve`: mixed requests at a fixed concurrency, then bomb uploads.

What it does: builds a CLIP checkpoint (random weights, `--preset`), an index of `--images`
synthetic scenes and a tiny `train-vlm` fusion run (2 steps) in a temporary folder, starts
`vlkit serve --model --index --vlm` on 127.0.0.1 and sends `--requests` requests from
`--concurrency` threads, round-robin over four kinds: zero-shot (10 labels, no templates), text
search, image search, and generate (`max_new_tokens` 16). It prints p50 / p99 latency (all
requests and per kind), throughput, the status codes, and the server's peak RSS during the load
(VmHWM, reset before the load where Linux allows). Then `--bomb-uploads` concurrent uploads of
the issue's decompression bomb (a ~420 KB RGB PNG of 12000 x 12000) to /api/zeroshot: wall
time, statuses and peak RSS.

With `--before REV` it runs the same against the web app as it was at git revision REV (its
`src/vlkit/serve/*.py` copied out of git into a temporary package and served with uvicorn), with
one bomb upload instead of `--bomb-uploads` (eight took that server to 9.5 GB).

    python benchmarks/serve_load.py
    python benchmarks/serve_load.py --before 2b3c7ea --rounds 3 --json serve.json

Measured: see the numbers reported with the run (machine named).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from machine import cpu_name

try:
    import vlkit
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import vlkit

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("zeroshot", "search", "search_image", "generate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small-64", help="CLIP preset (random weights)")
    parser.add_argument("--images", type=int, default=64, help="indexed images")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--bomb-uploads", type=int, default=8)
    parser.add_argument("--before", default=None, help="also measure the app at this git rev")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate before/after this many times; medians are printed")  # fmt: skip
    parser.add_argument("--json", default=None, help="write the results here")
    return parser.parse_args(argv)


def bomb_png(width: int = 12000, height: int = 12000) -> bytes:
    """A valid RGB PNG of zeros: ~420 KB on disk, width x height x 3 bytes decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    compressor, rows = zlib.compressobj(9), b"\0" * (1 + 3 * width) * 100
    pixels = b"".join(compressor.compress(rows) for _ in range(height // 100)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def build_fixtures(folder: Path, preset: str, count: int) -> dict[str, Path]:
    """A checkpoint, an index of `count` scenes (with `vlkit index`) and a fusion run."""
    from vlkit.data.datasets.shapes import ShapesDataset
    from vlkit.inference.image_search import build_image_index
    from vlkit.recipes.vlm_run import VLMRecipe, train_vlm

    torch.manual_seed(0)
    checkpoint, images = folder / "clip", folder / "images"
    vlkit.create_model(preset).save_pretrained(checkpoint)
    images.mkdir()
    scenes = ShapesDataset(count)
    for i in range(count):
        scenes.scene(i)[0].save(images / f"scene_{i:03d}.png")
    build_image_index(str(checkpoint), str(images), str(folder / "index"), "flat", 64)
    recipe = VLMRecipe(kind="llava", task="scene_questions", steps=2, connector_only_steps=0,
                       max_test=1, train_scenes=16, test_scenes=1, batch_size=8, hidden_size=32,
                       intermediate_size=64, layers=1, heads=2, num_queries=4, device="cpu")  # fmt: skip
    train_vlm(recipe, folder / "vlm")
    return {"model": checkpoint, "index": folder / "index", "vlm": folder / "vlm",
            "image": images / "scene_000.png"}  # fmt: skip


def old_app_package(rev: str, folder: Path) -> Path:
    """The serve package at `rev`, as `old_serve` (its `vlkit.serve.` imports renamed)."""
    package = folder / "old_serve"
    package.mkdir(parents=True)
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, "src/vlkit/serve/"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split()  # fmt: skip
    for name in names:
        if name.endswith(".py"):
            text = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=ROOT, check=True,
                                  capture_output=True, text=True).stdout  # fmt: skip
            (package / Path(name).name).write_text(text.replace("vlkit.serve.", "old_serve."))
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(fixtures: dict[str, Path], old: Path | None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    if old is None:
        command = [sys.executable, "-m", "vlkit", "serve", "--model", str(fixtures["model"]),
                   "--index", str(fixtures["index"]), "--vlm", str(fixtures["vlm"]),
                   "--port", str(port)]  # fmt: skip
    else:
        # vlkit.cli.main first: the same modules in memory as `python -m vlkit serve`.
        launch = (f"import sys, uvicorn, vlkit.cli.main; sys.path.insert(0, {str(old)!r}); "
                  "from old_serve.app import create_app; "
                  f"uvicorn.run(create_app({str(fixtures['model'])!r}, "
                  f"{str(fixtures['index'])!r}, vlm_path={str(fixtures['vlm'])!r}), "
                  f"host='127.0.0.1', port={port}, log_level='warning')")  # fmt: skip
        command = [sys.executable, "-c", launch]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if request(port, "GET", "/api/info")[0] == 200:
                return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start")


def request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def multipart(fields: dict[str, str], image: tuple[str, bytes]) -> tuple[bytes, dict]:
    boundary = "vlkit-load-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]  # fmt: skip
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                 f'filename="{image[0]}"\r\n\r\n'.encode() + image[1] + b"\r\n")  # fmt: skip
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def make_requests(image: bytes) -> dict[str, tuple[str, bytes, dict]]:
    words = ["cat", "dog", "car", "circle", "square", "triangle", "red", "blue", "green", "house"]
    labels = ", ".join(f"a photo of a {word}" for word in words)
    return {
        "zeroshot": ("/api/zeroshot", *multipart({"labels": labels}, ("q.png", image))),
        "search": ("/api/search", json.dumps({"text": "a red circle", "k": 8}).encode(),
                   {"Content-Type": "application/json"}),
        "search_image": ("/api/search/image", *multipart({"k": "8"}, ("q.png", image))),
        "generate": ("/api/generate", *multipart({"prompt": "what color is the circle?",
                                                  "max_new_tokens": "16"}, ("q.png", image))),
    }  # fmt: skip


class Memory:
    """Peak RSS of a process: VmHWM after a reset (clear_refs), sampled VmRSS as a fallback."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb, self.running = pid, 0, True
        with contextlib.suppress(OSError):  # resets VmHWM where Linux allows it
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def field(self, name: str) -> int:
        text = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(rf"^{name}:\s+(\d+)", text, re.M).group(1))

    def _sample(self) -> None:
        while self.running:
            try:
                self.peak_kb = max(self.peak_kb, self.field("VmRSS"))
            except (OSError, AttributeError):
                return
            time.sleep(0.02)

    def stop(self) -> float:
        """The peak in MB."""
        self.running = False
        self.thread.join()
        with contextlib.suppress(OSError, AttributeError):
            self.peak_kb = max(self.peak_kb, self.field("VmHWM"))
        return self.peak_kb / 1000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run_load(port: int, pid: int, requests: dict, count: int, concurrency: int) -> dict[str, Any]:
    def one(i: int) -> tuple[str, int, float]:
        kind = KINDS[i % len(KINDS)]
        path, body, headers = requests[kind]
        started = time.perf_counter()
        status, _ = request(port, "POST", path, body, headers)
        return kind, status, (time.perf_counter() - started) * 1000

    memory = Memory(pid)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(count)))
    wall = time.perf_counter() - started
    peak = memory.stop()
    latencies = [ms for _, _, ms in results]
    statuses: dict[str, int] = {}
    for _, status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    per_kind = {
        kind: {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99)}
        for kind in KINDS
        if (ms := [m for k, _, m in results if k == kind])
    }
    return {"requests": count, "concurrency": concurrency, "wall_s": wall,
            "requests_per_s": count / wall, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "statuses": statuses, "per_kind": per_kind,
            "peak_rss_mb": peak}  # fmt: skip


def run_bombs(port: int, pid: int, bomb: bytes, uploads: int) -> dict[str, Any]:
    body, headers = multipart({"labels": "a cat, a dog"}, ("bomb.png", bomb))
    memory = Memory(pid)
    before = memory.field("VmRSS") / 1000
    started = time.perf_counter()
    with ThreadPoolExecutor(uploads) as pool:
        statuses = sorted(pool.map(lambda _: request(port, "POST", "/api/zeroshot", body,
                                                     headers)[0], range(uploads)))  # fmt: skip
    wall = time.perf_counter() - started
    peak = memory.stop()
    time.sleep(1)
    return {"uploads": uploads, "bomb_kb": len(bomb) / 1000, "wall_s": wall, "statuses": statuses,
            "rss_before_mb": before, "peak_rss_mb": peak,
            "rss_after_mb": memory.field("VmRSS") / 1000}  # fmt: skip


def measure(label: str, fixtures: dict, old: Path | None, args: argparse.Namespace, bomb: bytes):
    process, port = start_server(fixtures, old)
    try:
        image = fixtures["image"].read_bytes()
        requests = make_requests(image)
        for kind in KINDS:  # warm up each route once (and check it answers)
            path, body, headers = requests[kind]
            status, answer = request(port, "POST", path, body, headers)
            assert status == 200, (kind, status, answer[:200])
        load = run_load(port, process.pid, requests, args.requests, args.concurrency)
        uploads = args.bomb_uploads if old is None else 1
        bombs = run_bombs(port, process.pid, bomb, uploads)
        alive = process.poll() is None and request(port, "GET", "/api/info")[0] == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(f"\n{label}: {args.requests} requests at {args.concurrency} concurrent "
          f"({', '.join(KINDS)} round-robin)")  # fmt: skip
    print(f"  p50 {load['p50_ms']:.0f} ms, p99 {load['p99_ms']:.0f} ms, "
          f"{load['requests_per_s']:.1f} req/s, statuses {load['statuses']}, "
          f"peak RSS {load['peak_rss_mb']:.0f} MB")  # fmt: skip
    for kind, stats in load["per_kind"].items():
        print(f"    {kind:13s} p50 {stats['p50_ms']:.0f} ms, p99 {stats['p99_ms']:.0f} ms")
    print(f"  {bombs['uploads']} concurrent bomb upload(s) ({bombs['bomb_kb']:.0f} KB PNG, "
          f"12000x12000): {bombs['wall_s']:.2f} s, statuses {bombs['statuses']}, RSS "
          f"{bombs['rss_before_mb']:.0f} -> peak {bombs['peak_rss_mb']:.0f} -> "
          f"{bombs['rss_after_mb']:.0f} MB; server alive: {alive}")  # fmt: skip
    return {"load": load, "bombs": bombs, "alive_after": alive}


def summary(name: str, rounds: list[dict]) -> dict[str, float]:
    """Medians over the rounds, printed in one line."""
    keys = ("p50_ms", "p99_ms", "requests_per_s", "peak_rss_mb")
    medians = {key: statistics.median(r["load"][key] for r in rounds) for key in keys}
    print(f"\n{name}, median of {len(rounds)} round(s): p50 {medians['p50_ms']:.0f} ms, "
          f"p99 {medians['p99_ms']:.0f} ms, {medians['requests_per_s']:.1f} req/s, "
          f"peak RSS {medians['peak_rss_mb']:.0f} MB")  # fmt: skip
    return medians


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)  # the fixtures; the servers use their own defaults
    results: dict[str, Any] = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "preset": args.preset,
        "images": args.images,
    }  # fmt: skip
    print(f"{cpu_name()}, {os.cpu_count()} cores; preset {args.preset}, {args.images} images")
    bomb = bomb_png()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fixtures = build_fixtures(folder, args.preset, args.images)
        old = old_app_package(args.before, folder / "before") if args.before else None
        runs: dict[str, list] = {"before": [], "after": []}
        for number in range(1, args.rounds + 1):
            # Alternating rounds: a machine shared with other work drifts during a run.
            if old is not None:
                label = f"before ({args.before}), round {number}"
                runs["before"].append(measure(label, fixtures, old, args, bomb))
            label = f"after (this checkout), round {number}"
            runs["after"].append(measure(label, fixtures, None, args, bomb))
    for name, rounds in runs.items():
        if rounds:
            results[name] = {"rounds": rounds, "median": summary(name, rounds)}
    if old is not None:
        results["before"]["rev"] = args.before
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
