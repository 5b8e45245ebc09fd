"""Image-encoding throughput of vlkit vs transformers `CLIPModel` on CLIP ViT-B/32.

What it measures: images/s (and ms/batch) of `vlkit.CLIP.encode_image` and of transformers'
`CLIPModel.get_image_features` with IDENTICAL weights (a randomly initialised vlkit model is
written with `save_pretrained` to a temporary directory and loaded back by transformers), on the
same input batch and dtype, in one process. After a warm-up the implementations alternate, round
after round (the order rotates every round), and the median round is reported. Before timing, the
outputs are compared (max abs diff; fp32 must agree to < 1e-4). With `--compile` the
`torch.compile`d versions of both are measured as extra rows. On CUDA the peak memory of each
implementation (`torch.cuda.max_memory_allocated`, reset before every call) is reported too.

Run from the repository root (no install needed with PYTHONPATH=src):

    python benchmarks/encode_throughput.py                       # CPU: fp32, batch 32
    python benchmarks/encode_throughput.py --device cuda         # CUDA: bf16, batch 256
    python benchmarks/encode_throughput.py --device cuda --batch-size 1024 --compile \\
        --json out.json

Without transformers installed only the vlkit rows are measured (and the output says so).
Exit status: 0 on success, 1 if the outputs of the implementations disagree.
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

import torch
from machine import cpu_name

try:
    import vlkit
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import vlkit

PRESET = "clip-vit-b-32"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Max abs diff allowed between implementations, relative to max |reference output| (fp32: absolute).
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}
HF_EAGER = "transformers"

EncodeFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Row:
    """One measured implementation."""

    implementation: str
    dtype: str
    batch_size: int
    ms_per_batch: float | None = None  # median over the rounds
    images_per_s: float | None = None
    ms_per_batch_min: float | None = None  # fastest round (least disturbed by other processes)
    ratio_vs_transformers: float | None = None
    peak_mem_mib: float | None = None  # max_memory_allocated during a call (all resident tensors)
    peak_extra_mib: float | None = None  # ... minus what was allocated before the call
    max_abs_diff: float | None = None  # vs the reference output (transformers eager, else vlkit)
    ms_per_batch_rounds: list[float] = field(default_factory=list)
    error: str | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="default: cuda if available, else cpu",
    )
    parser.add_argument(
        "--dtype", choices=tuple(DTYPES), default=None, help="default: fp32 on cpu, bf16 on cuda"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: 32 on cpu, 256 on cuda"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="timed rounds per implementation (default: 5 cpu, 20 cuda)",
    )
    parser.add_argument(
        "--iters",
        type=int,
        default=None,
        help="forward passes per timed round (default: 1 cpu, 5 cuda)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed passes per implementation (default: 1 cpu, 5 cuda)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="also measure torch.compile'd versions of both"
    )
    parser.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode (default, reduce-overhead, max-autotune, ...)",
    )
    parser.add_argument(
        "--hf-attn",
        default="sdpa",
        help="transformers attn_implementation (eager, sdpa, flex_attention, "
        "flash_attention_2 if flash-attn is installed); default sdpa",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", type=Path, default=None, metavar="OUT", help="write the results as JSON to OUT"
    )
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    for name, cpu_default, cuda_default in (
        ("dtype", "fp32", "bf16"),
        ("batch_size", 32, 256),
        ("rounds", 5, 20),
        ("iters", 1, 5),
        ("warmup", 1, 5),
    ):
        if getattr(args, name) is None:
            setattr(args, name, cuda_default if cuda else cpu_default)
    return args


def machine_info(device: str) -> dict[str, Any]:
    """The hardware and software the numbers were measured on."""
    cpu = cpu_name()
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": None,
        "vlkit": vlkit.__version__,
        "platform": platform.platform(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return info


def describe(info: dict[str, Any]) -> str:
    hardware = info.get("gpu") or f"{info['cpu']} ({info['torch_threads']} torch threads)"
    return (
        f"{hardware} | torch {info['torch']} | transformers {info['transformers'] or 'n/a'} | "
        f"python {info['python']}"
    )


def build_models(
    device: torch.device, dtype: torch.dtype, hf_attn: str
) -> tuple[torch.nn.Module, torch.nn.Module | None, str | None, str | None]:
    """Returns (vlkit model, transformers model or None, its attention backend, why it is None)."""
    model = vlkit.create_model(PRESET).eval()
    try:
        from transformers import CLIPModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError as err:
        return model.to(device, dtype), None, None, f"transformers not importable: {err}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            try:
                hf = CLIPModel.from_pretrained(tmp, attn_implementation=hf_attn)
            except (ValueError, ImportError) as err:  # backend unavailable: library default
                print(f"attn_implementation={hf_attn!r} unavailable ({err}); using the default")
                hf = CLIPModel.from_pretrained(tmp)
    except Exception as err:  # an incompatible transformers: still measure vlkit
        reason = f"transformers could not load the model: {type(err).__name__}: {err}"
        return model.to(device, dtype), None, None, reason
    hf = hf.eval().to(device, dtype)
    attn = getattr(hf.config, "_attn_implementation", None) or "unknown"
    return model.to(device, dtype), hf, attn, None


def hf_encoder(hf: torch.nn.Module) -> EncodeFn:
    def encode(pixel_values: torch.Tensor) -> torch.Tensor:
        out = hf.get_image_features(pixel_values=pixel_values)
        # transformers >= 5 returns a BaseModelOutputWithPooling, 4.x the projected tensor.
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    return encode


def vlkit_encoder(model: torch.nn.Module) -> EncodeFn:
    def encode(pixel_values: torch.Tensor) -> torch.Tensor:
        return model.encode_image(pixel_values)

    return encode


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_round(
    fn: EncodeFn, x: torch.Tensor, iters: int, device: torch.device
) -> tuple[float, float | None, float | None]:
    """Runs `fn` `iters` times; returns (ms per call, peak MiB, peak MiB above the resident set)."""
    cuda = device.type == "cuda"
    if cuda:
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn(x)
    sync(device)
    elapsed_ms = (time.perf_counter() - start) * 1e3 / iters
    if not cuda:
        return elapsed_ms, None, None
    peak = torch.cuda.max_memory_allocated(device)
    return elapsed_ms, peak / 2**20, (peak - resident) / 2**20


def format_table(rows: list[Row]) -> str:
    header = (
        "implementation",
        "dtype",
        "batch",
        "images/s",
        "ms/batch",
        "min ms",
        "vs HF eager",
        "peak MiB",
        "+act MiB",
        "max|diff|",
    )
    lines = []
    for r in rows:
        if r.error:
            lines.append((r.implementation, r.dtype, str(r.batch_size), "failed", r.error[:60]))
            continue
        lines.append(
            (
                r.implementation,
                r.dtype,
                str(r.batch_size),
                f"{r.images_per_s:.1f}",
                f"{r.ms_per_batch:.2f}",
                f"{r.ms_per_batch_min:.2f}",
                "n/a" if r.ratio_vs_transformers is None else f"{r.ratio_vs_transformers:.3f}x",
                "-" if r.peak_mem_mib is None else f"{r.peak_mem_mib:.0f}",
                "-" if r.peak_extra_mib is None else f"{r.peak_extra_mib:.0f}",
                "ref" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}",
            )
        )
    widths = [
        max(len(h), *(len(line[i]) for line in lines if i < len(line)))
        for i, h in enumerate(header)
    ]
    fmt = "  ".join
    out = [
        fmt(h.ljust(w) for h, w in zip(header, widths, strict=True)),
        fmt("-" * w for w in widths),
    ]
    out += [fmt(c.ljust(w) for c, w in zip(line, widths, strict=False)) for line in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    info = machine_info(args.device)
    print(f"machine: {describe(info)}")

    model, hf, hf_attn, hf_missing = build_models(device, dtype, args.hf_attn)
    notes: list[str] = []
    if hf is None:
        notes.append(f"vlkit-only run: {hf_missing}")
    else:
        notes.append(f"transformers attn_implementation={hf_attn}")
    notes.append("vlkit attention: F.scaled_dot_product_attention, fused qkv projection")
    print("\n".join(notes))

    impls: dict[str, EncodeFn] = {}
    if hf is not None:
        impls[HF_EAGER] = hf_encoder(hf)
    impls["vlkit"] = vlkit_encoder(model)
    if args.compile:
        for name in list(impls):
            impls[f"{name} (compile)"] = torch.compile(impls[name], mode=args.compile_mode)
    rows = {name: Row(name, args.dtype, args.batch_size) for name in impls}

    x = torch.randn(args.batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    x = x.to(device, dtype)
    tolerance = TOLERANCE[args.dtype]
    agree = True
    with torch.inference_mode():
        # Correctness first: every implementation against the first one that runs (transformers
        # eager when available). For compiled versions this first call also compiles.
        reference: torch.Tensor | None = None
        reference_name = ""
        for name, fn in impls.items():
            start = time.perf_counter()
            try:
                out = fn(x).float()
                sync(device)
            except Exception as err:  # report it and go on with the others
                rows[name].error = f"{type(err).__name__}: {err}".splitlines()[0]
                print(f"{name}: FAILED: {rows[name].error}")
                continue
            seconds = time.perf_counter() - start
            if reference is None:
                reference, reference_name = out, name
                print(f"reference output: {name} ({seconds:.1f}s)")
                continue
            ref_max = reference.abs().max().item()
            allowed = tolerance * (1.0 if args.dtype == "fp32" else max(ref_max, 1e-6))
            diff = (out - reference).abs().max().item()
            cosine = torch.nn.functional.cosine_similarity(out, reference, dim=-1).min().item()
            rows[name].max_abs_diff = diff
            ok = diff <= allowed
            agree &= ok
            print(
                f"check {name} vs {reference_name}: max abs diff {diff:.3e} (|ref| max "
                f"{ref_max:.3f}, tolerance {allowed:.1e}), min cosine {cosine:.6f} "
                f"[{'ok' if ok else 'MISMATCH'}] ({seconds:.1f}s)"
            )
        live = {name: fn for name, fn in impls.items() if rows[name].error is None}

        for _ in range(args.warmup):
            for fn in live.values():
                fn(x)
        sync(device)

        names = list(live)
        if not names:
            print("no implementation ran")
            return 1
        for round_index in range(args.rounds):
            shift = round_index % len(names)  # rotate so no implementation always runs first
            for name in names[shift:] + names[:shift]:
                ms, peak, extra = timed_round(live[name], x, args.iters, device)
                row = rows[name]
                row.ms_per_batch_rounds.append(ms)
                if peak is not None:
                    row.peak_mem_mib = max(row.peak_mem_mib or 0.0, peak)
                    row.peak_extra_mib = max(row.peak_extra_mib or 0.0, extra)

    for row in rows.values():
        if row.ms_per_batch_rounds:
            row.ms_per_batch = statistics.median(row.ms_per_batch_rounds)
            row.ms_per_batch_min = min(row.ms_per_batch_rounds)
            row.images_per_s = args.batch_size / row.ms_per_batch * 1e3
    base = rows.get(HF_EAGER)
    if base is not None and base.ms_per_batch:
        for row in rows.values():
            if row.ms_per_batch:
                row.ratio_vs_transformers = base.ms_per_batch / row.ms_per_batch

    print(
        f"\n{PRESET} image encoder, {args.device}, median of {args.rounds} rounds x "
        f"{args.iters} batch(es), {args.warmup} warm-up"
    )
    print(format_table(list(rows.values())))
    if not agree:
        print("\nOUTPUTS DISAGREE beyond tolerance (see the checks above)")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": "encode_throughput",
            "preset": PRESET,
            "machine": info,
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "hf_attn_implementation": hf_attn,
            "notes": notes,
            "outputs_agree": agree,
            "tolerance": tolerance,
            "results": [asdict(row) for row in rows.values()],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
