"""Activation memory with and without gradient checkpointing: a ViT tower and a decoder LM.

Gradient (activation) checkpointing (Chen et al. 2016, "Training deep nets with sublinear memory
cost") keeps only each layer's input in the forward pass and recomputes the layer in the backward
pass. The course quotes a 40-50% memory saving for about a third more compute. This script
measures both on the same model, same batch, checkpointing off and on (vlkit's per-layer
checkpointing: `VisionTransformer.set_gradient_checkpointing`, `DecoderLM.set_gradient_checkpointing`
through `vlkit.training.memory.set_gradient_checkpointing`'s targets).

Two memory measures, because CPU torch has no `max_memory_allocated`:

* `saved MiB`: the bytes of every tensor the forward pass created that is still alive when it
  returns (`vlkit.training.memory.activation_bytes`: a TorchDispatchMode records each output
  storage, weak references tell which survive; the model's parameters are excluded). That is
  exactly what autograd (or a checkpoint, for a layer input) keeps for the backward pass: the
  activation memory the technique is about, counted in bytes, independent of the allocator.
* `step MiB`: the process' peak resident memory during one forward + backward above its
  resident memory before it (VmHWM reset through /proc/self/clear_refs), in a FRESH subprocess per
  configuration, started with glibc's `MALLOC_MMAP_THRESHOLD_=65536` so that freed tensors leave
  RSS at once. It includes everything: the saved activations, the recomputed layer during the
  backward pass, gradients flowing back, temporaries. A warm-up step first allocates the `.grad`
  buffers (kept, zeroed), so they are not part of it. This is the peak a training step needs.

The gradients with and without checkpointing must agree (relative 1e-5 on their norm); exit
status 1 otherwise. `cpu s` is the process CPU time of the measured step (the recomputation
shows there; wall time swings with a shared machine's load).

    python benchmarks/checkpointing_memory.py                      # ViT-B/16 224 px batch 8; LM
    python benchmarks/checkpointing_memory.py --device cuda        # CUDA: max_memory_allocated
    python benchmarks/checkpointing_memory.py --quick              # small shapes, seconds

On CUDA `step MiB` is `torch.cuda.max_memory_allocated` during the step minus the allocation
before it, in the same fresh subprocess.
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
import torch.nn.functional as F

from vlkit.models.decoder.config import DecoderConfig
from vlkit.models.decoder.llama import DecoderLM
from vlkit.models.vit import VisionTransformer, ViTConfig
from vlkit.training.memory import activation_bytes

MIB = 2**20
MODELS = ("vit", "decoder")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="vit,decoder", help="comma-separated: vit, decoder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    parser.add_argument("--vit-batch", type=int, default=8)
    parser.add_argument("--vit-layers", type=int, default=12)
    parser.add_argument("--lm-batch", type=int, default=2)
    parser.add_argument("--lm-seq", type=int, default=512)
    parser.add_argument("--lm-layers", type=int, default=12)
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.add_argument("--_child", nargs=2, metavar=("MODEL", "CHECKPOINTING"),
                        help=argparse.SUPPRESS)  # fmt: skip
    return parser.parse_args(argv)


def describe(args: argparse.Namespace, name: str) -> str:
    if name == "vit":
        c = vit_config(args)
        return (f"ViT {c.width}w x {c.layers} layers, {c.image_size} px / patch {c.patch_size}, "
                f"batch {args.vit_batch}")  # fmt: skip
    c = decoder_config(args)
    return (f"Llama-style LM {c.hidden_size}w x {c.num_layers} layers, vocab {c.vocab_size}, "
            f"batch {args.lm_batch} x {lm_length(args)} tokens")  # fmt: skip


def lm_length(args: argparse.Namespace) -> int:
    return 64 if args.quick else args.lm_seq


def vit_config(args: argparse.Namespace) -> ViTConfig:
    if args.quick:
        return ViTConfig(image_size=64, patch_size=8, width=128, layers=4, heads=4, mlp_dim=512)
    # ViT-B/16 (CLIP's), depth from --vit-layers.
    return ViTConfig(image_size=224, patch_size=16, width=768, layers=args.vit_layers, heads=12,
                     mlp_dim=3072)  # fmt: skip


def decoder_config(args: argparse.Namespace) -> DecoderConfig:
    if args.quick:
        return DecoderConfig(vocab_size=1000, hidden_size=128, intermediate_size=344,
                             num_layers=4, num_heads=4, num_kv_heads=2)  # fmt: skip
    # SmolLM-135M's width (576, 9 query / 3 key-value heads, SwiGLU 1536, vocabulary 49152).
    return DecoderConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_layers=args.lm_layers, num_heads=9, num_kv_heads=3,
                         max_position_embeddings=max(2048, args.lm_seq))  # fmt: skip


def build(args: argparse.Namespace, name: str, device: torch.device) -> tuple[Any, Any]:
    """(model in training mode, a function computing the loss of the fixed batch)."""
    torch.manual_seed(0)
    if name == "vit":
        config = vit_config(args)
        model = VisionTransformer(config).to(device).train()
        size = config.image_size
        images = torch.randn(args.vit_batch, 3, size, size, device=device)
        return model, lambda: model(images).tokens.float().square().mean()
    config = decoder_config(args)
    model = DecoderLM(config).to(device).train()
    ids = torch.randint(0, config.vocab_size, (args.lm_batch, lm_length(args)), device=device)

    def loss() -> torch.Tensor:
        logits = model(ids).logits  # (B, L, V)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())

    return model, loss


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def child(args: argparse.Namespace) -> int:
    """Subprocess entry: one model, checkpointing on or off; prints its measurements as JSON."""
    name, enabled = args._child[0], args._child[1] == "1"
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    model, loss_fn = build(args, name, device)
    model.set_gradient_checkpointing(enabled)

    def step() -> None:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.zero_()
        loss_fn().backward()

    step()  # warm-up: allocates the .grad buffers, which the measured step reuses
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        before = (_status_kib("VmRSS") or 0) * 1024
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = (_status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    grad_norm = float(torch.sqrt(sum(p.grad.double().square().sum() for p in model.parameters()
                                     if p.grad is not None)))  # fmt: skip
    loss, saved = activation_bytes(loss_fn, model)
    del loss
    print(json.dumps({"saved_mib": saved / MIB, "step_mib": (peak - before) / MIB,
                      "wall_s": wall, "cpu_s": cpu, "grad_norm": grad_norm}))  # fmt: skip
    return 0


def measure(argv: list[str], name: str, enabled: bool) -> dict[str, float]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, *argv, "--_child", name, "1" if enabled else "0"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{name} (checkpointing={enabled}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args._child:
        return child(args)
    from tqdm.auto import tqdm  # progress over the four subprocesses

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        print(f"checkpointing_memory.py: unknown --models {unknown}; choose from {MODELS}")
        return 2
    rows, failed = [], False
    with tqdm(total=2 * len(names), desc="configurations") as bar:
        for name in names:
            off = measure(argv, name, False)
            bar.update(1)
            on = measure(argv, name, True)
            bar.update(1)
            agree = abs(on["grad_norm"] - off["grad_norm"]) <= 1e-5 * abs(off["grad_norm"])
            failed |= not agree
            rows.append({"model": name, "shape": describe(args, name), "off": off, "on": on,
                         "gradients_agree": agree})  # fmt: skip
    print(format_table(rows))
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), device {args.device}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    if failed:
        print("gradients with and without checkpointing disagree", file=sys.stderr)
    return 1 if failed else 0


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | saved MiB off / on | saving | step MiB off / on | saving | cpu s off / on | "
        "grads equal |",
        "| --- | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in rows:
        off, on = r["off"], r["on"]
        saved = 1 - on["saved_mib"] / off["saved_mib"]
        step = 1 - on["step_mib"] / off["step_mib"]
        lines.append(
            f"| {r['shape']} | {off['saved_mib']:.1f} / {on['saved_mib']:.1f} | {saved:.0%} | "
            f"{off['step_mib']:.1f} / {on['step_mib']:.1f} | {step:.0%} | "
            f"{off['cpu_s']:.2f} / {on['cpu_s']:.2f} | {'yes' if r['gradients_agree'] else 'NO'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
