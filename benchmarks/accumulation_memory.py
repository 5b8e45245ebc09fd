"""Peak memory of exact GradCache accumulation vs one full-batch backward, same model and batch.

Each configuration runs in a fresh subprocess (so peaks don't mix) that builds the model, runs one
contrastive backward over the whole batch, and reports its peak resident memory (CPU) or
`torch.cuda.max_memory_allocated` (CUDA). Also checks the gradients of both agree.

    python benchmarks/accumulation_memory.py                      # CPU, small-64 preset, batch 256
    python benchmarks/accumulation_memory.py --device cuda --preset clip-vit-b-32 --batch-size 1024
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def _child(preset: str, device: str, batch: int, micro: int) -> None:
    import torch

    import vlkit
    from vlkit.losses.contrastive import clip_loss
    from vlkit.training.accumulation import accumulated_contrastive_backward

    torch.manual_seed(0)
    model = vlkit.create_model(preset).to(device).train()
    size, length = model.config.vision.image_size, model.config.text.context_length
    images = torch.randn(batch, 3, size, size, device=device)
    texts = torch.randint(1, 49407, (batch, length), device=device)
    texts[:, -1] = 49407
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if micro >= batch:
        out = model(images, texts)
        clip_loss(out.image_embeds, out.text_embeds, out.logit_scale).backward()
    else:
        accumulated_contrastive_backward(model, clip_loss, images, texts, micro)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    grad = model.text_projection.weight.grad.float().cpu()
    print(
        json.dumps(
            {"peak_mib": peak, "grad_sum": float(grad.sum()), "grad_norm": float(grad.norm())}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small-64")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--micro", type=int, nargs="+", default=[256, 64, 16])
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        preset, device, batch, micro = args.child
        _child(preset, device, int(batch), int(micro))
        return
    rows = []
    for micro in args.micro:
        command = [sys.executable, __file__, "--child", args.preset, args.device,
                   str(args.batch_size), str(micro)]  # fmt: skip
        result = json.loads(
            subprocess.run(command, check=True, capture_output=True, text=True).stdout
        )
        rows.append((micro, result))
    reference = rows[0][1]
    kind = "peak RSS growth" if args.device == "cpu" else "peak CUDA memory"
    print(f"{args.preset}, batch {args.batch_size}, {args.device}; {kind} during one backward")
    print(f"{'micro-batch':>12}{'peak MiB':>10}{'vs full':>9}{'grad rel. diff':>16}")
    for micro, result in rows:
        diff = abs(result["grad_norm"] - reference["grad_norm"]) / reference["grad_norm"]
        label = "full batch" if micro >= args.batch_size else str(micro)
        print(f"{label:>12}{result['peak_mib']:>10.0f}{result['peak_mib'] / reference['peak_mib']:>8.2f}x"
              f"{diff:>16.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
