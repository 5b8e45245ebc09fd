"""Contrastive training throughput: vlkit vs open_clip on identical model shapes and batches.

Both train a ViT-B/32-shaped CLIP (QuickGELU, the OpenAI shape: open_clip's
`ViT-B-32-quickgelu`, vlkit's `clip-vit-b-32`) with AdamW and the InfoNCE loss on the same random
batch, under bf16 autocast where available. The two run in one process, interleaved round by
round, and the table reports samples/s (median round), the ratio, peak memory and — on CUDA —
MFU against a measured bf16 matmul peak (8192^3 GEMM on this GPU).

    python benchmarks/train_throughput.py                       # CPU, small batch
    python benchmarks/train_throughput.py --device cuda --batch-size 1024 [--compile]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measured_matmul_peak(device: torch.device) -> float | None:
    """bf16 FLOP/s of a large square GEMM (the denominator of MFU)."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(device)
    return 2 * 8192**3 * 10 / (time.perf_counter() - start)


def build_vlkit(device: torch.device, compile: bool = False):
    import vlkit
    from vlkit.losses.contrastive import clip_loss

    model = vlkit.create_model("clip-vit-b-32").to(device).train()
    forward = torch.compile(model) if compile else model

    def step(images, texts):
        out = forward(images, texts)
        return clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)

    return model, step


def build_open_clip(device: torch.device, compile: bool = False):
    import open_clip

    model = open_clip.create_model("ViT-B-32-quickgelu").to(device).train()
    forward = torch.compile(model) if compile else model
    loss_fn = open_clip.ClipLoss()

    def step(images, texts):
        image_features, text_features, logit_scale = forward(images, texts)[:3]
        return loss_fn(image_features, text_features, logit_scale)

    return model, step


def train_flops_per_sample(model, step, images, texts) -> float:
    """3x the forward FLOPs (forward + backward), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        step(images[:2], texts[:2])
    return 3 * counter.get_total_flops() / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = args.batch_size or (1024 if device.type == "cuda" else 16)
    steps = args.steps or (10 if device.type == "cuda" else 2)
    torch.manual_seed(0)
    images = torch.randn(batch, 3, 224, 224, device=device)
    texts = torch.randint(1, 49407, (batch, 77), device=device)
    texts[:, 20] = 49407

    runners = {}
    for name, build in (("open_clip", build_open_clip), ("vlkit", build_vlkit)):
        try:
            model, step = build(device, args.compile)
        except ImportError as error:
            print(f"skipping {name}: {error}")
            continue
        flops = train_flops_per_sample(*build(device)[:2], images, texts)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
        runners[name] = (model, step, optimizer, flops)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def run(name: str, n: int) -> float:
        model, step, optimizer, _ = runners[name]
        _sync(device)
        start = time.perf_counter()
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = step(images, texts)
            loss.backward()
            optimizer.step()
        _sync(device)
        return n * batch / (time.perf_counter() - start)

    peaks, rates = {}, {name: [] for name in runners}
    for name in runners:
        run(name, 2)  # warm-up (and compilation)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            run(name, 1)
            peaks[name] = torch.cuda.max_memory_allocated() / 2**30
    for _ in range(args.rounds):
        for name in runners:
            rates[name].append(run(name, steps))

    peak_flops = measured_matmul_peak(device)
    machine = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    print(f"machine: {machine}; torch {torch.__version__}; batch {batch}; {args.precision}"
          f"{' + torch.compile' if args.compile else ''}")  # fmt: skip
    if peak_flops:
        print(f"measured bf16 matmul peak: {peak_flops / 1e12:.0f} TFLOP/s")
    base = statistics.median(rates["open_clip"]) if "open_clip" in rates else None
    print(f"{'implementation':<14}{'samples/s':>12}{'ratio':>8}{'peak GiB':>10}{'MFU':>8}")
    results = {}
    for name, values in rates.items():
        rate = statistics.median(values)
        mfu = rate * runners[name][3] / peak_flops if peak_flops else None
        ratio = rate / base if base else None
        results[name] = {
            "samples_per_s": rate,
            "ratio": ratio,
            "peak_gib": peaks.get(name),
            "mfu": mfu,
        }
        print(f"{name:<14}{rate:>12.1f}{(f'{ratio:.2f}x' if ratio else '-'):>8}"
              f"{(f'{peaks[name]:.1f}' if name in peaks else '-'):>10}"
              f"{(f'{100 * mfu:.1f}%' if mfu else '-'):>8}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine, "batch": batch, "precision": args.precision,
                       "compile": args.compile, "torch": torch.__version__, "results": results},
                      handle, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
