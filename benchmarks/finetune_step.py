"""Fine-tuning step of vlkit vs transformers (+ peft) on a SmolVLM-256M-shaped model.

What it measures: one training step (forward with labels, backward, AdamW step, `zero_grad`) of
the same randomly initialised SmolVLM-256M-shaped model (SigLIP base-patch16-512 tower, pixel
shuffle 4, 30-layer Llama text model of width 576 with 9 / 3 heads, vocabulary 49280, tied
embeddings; the shape of `vlm_generate.py`). transformers builds it
(`SmolVLMForConditionalGeneration`), writes it with `save_pretrained`, and both libraries load
that directory (`vlkit.from_pretrained`), so the weights are identical. Two regimes:

* `full`: every parameter trained;
* `lora`: LoRA r=16, alpha=32 (dropout `--lora-dropout`) on the q, k, v and o projections of the
  text model and the q, k, v projections of the vision tower (peft's suffix match of
  `q_proj,k_proj,v_proj,o_proj` picks the same modules in both, the count is checked); the rest
  frozen. transformers side: `peft.get_peft_model`; vlkit side: `vlkit.training.lora` when it
  is there, else `peft.inject_adapter_in_model` on the vlkit module tree.

The batch is the same for both: each row is a user turn with one image (`--image-size` px, its
image tokens spliced into the text) and an assistant answer; labels cover the answer only
(-100 elsewhere), an all-ones `attention_mask` is passed as an SFT collate does (`--ragged`
right-pads rows to different lengths instead). Before timing, the losses of both at step 0
(eval mode, no grad) must agree (fp32: 1e-4 relative; bf16: 2e-2); exit status 1 otherwise.

Timing: both implementations alternate round after round (order rotating), each round
`--steps` steps; the table shows the median and the fastest step, tokens/s (all input tokens,
image tokens included, over the median step) and the ratio vs transformers (> 1 = vlkit faster),
plus the median process CPU time per step (`cpu ms`, `x cpu`): on a CPU shared with other jobs
wall times swing several-fold with the neighbours' load, CPU time much less (use `--threads 1`
there, so that no OpenMP thread spins waiting for a descheduled sibling).
Memory:

* CUDA: `torch.cuda.max_memory_allocated` over one step after a warm-up step, minus what was
  allocated before this implementation was built (the other one's model: `peak MiB` is this
  implementation's weights + optimizer state + step), and the part above the memory held
  before the step (`+step MiB`: activations, gradients, temporaries);
* CPU: the process' peak RSS (VmHWM, reset through /proc/self/clear_refs) in a FRESH
  subprocess per implementation that loads only that model, started with glibc's
  `MALLOC_MMAP_THRESHOLD_=65536` so that freed tensors leave RSS at once (otherwise the
  allocator's cache makes RSS deltas meaningless); `+step MiB` = peak during a step above the
  RSS before it (activations, gradients, temporaries). (`tracemalloc` does not see torch's
  allocations, hence RSS.)

MFU (CUDA): training FLOPs of one step counted by `torch.utils.flop_counter.FlopCounterMode` on
transformers' model (the same number for both) / step time / a measured bf16 GEMM peak.

    python benchmarks/finetune_step.py --layers 6 --vision-layers 3 --image-size 256 --threads 1  # CPU
    python benchmarks/finetune_step.py --device cuda --batch-size 8 [--compile] --out gpu.json

Exit status: 0 on success, 1 if the step-0 losses disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from machine import cpu_name
from vlm_generate import FAKE_AROUND_IMAGE, FULL, GLOBAL_IMG, IMAGE_TOKEN, SCALE_FACTOR

try:
    import vlkit
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import vlkit

IMPLS = ("transformers", "vlkit")
REGIMES = ("full", "lora")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
PATCH = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default=None,
        help="bf16 = autocast with fp32 master weights (default on cuda); fp32 on cpu",
    )
    p.add_argument("--regimes", default="full,lora", help="comma-separated: full, lora")
    p.add_argument("--layers", type=int, default=None, help="text layers (default 30)")
    p.add_argument("--vision-layers", type=int, default=None, help="vision layers (default 12)")
    p.add_argument(
        "--image-size",
        type=int,
        default=512,
        help="image side in px (multiple of 64); 512 -> 64 image tokens",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default 2 cpu, 8 cuda")
    p.add_argument("--prompt-tokens", type=int, default=32, help="text tokens of the user turn")
    p.add_argument("--answer-tokens", type=int, default=32, help="supervised answer tokens")
    p.add_argument(
        "--ragged",
        action="store_true",
        help="rows of different lengths, right-padded (attention mask with zeros)",
    )
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=2, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--hf-attn", default="sdpa", help="transformers attn_implementation")
    p.add_argument("--no-memory", action="store_true", help="skip the CPU memory subprocesses")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument(
        "--_memory-child",
        nargs=3,
        default=None,
        help=argparse.SUPPRESS,
        metavar=("DIR", "IMPL", "REGIME"),
    )
    args = p.parse_args(argv)  # fmt: skip
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    args.batch_size = args.batch_size or (8 if args.device == "cuda" else 2)
    args.regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    for regime in args.regimes:
        if regime not in REGIMES:
            p.error(f"--regimes: unknown {regime!r}; choose from {', '.join(REGIMES)}")
    if args.image_size % (PATCH * SCALE_FACTOR):
        p.error(f"--image-size must be a multiple of {PATCH * SCALE_FACTOR}")
    return args


def model_shape(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """transformers vision / text config dicts: the 256M shape with the command's overrides."""
    vision = dict(FULL["vision"], image_size=args.image_size)
    text = dict(FULL["text"], initializer_range=0.02)  # the default init (training starts here)
    if args.layers is not None:
        text["num_hidden_layers"] = args.layers
    if args.vision_layers is not None:
        vision["num_hidden_layers"] = args.vision_layers
    return {"vision": vision, "text": text}


def write_checkpoint(shape: dict[str, dict[str, Any]], directory: str) -> int:
    """A random transformers SmolVLM written to `directory`; returns its parameter count."""
    import transformers

    config = transformers.SmolVLMConfig(
        vision_config=dict(shape["vision"]), text_config=dict(shape["text"]),
        scale_factor=SCALE_FACTOR, image_token_id=IMAGE_TOKEN, tie_word_embeddings=True,
        use_cache=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.SmolVLMForConditionalGeneration(config)
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def image_tokens(image_size: int) -> int:
    return (image_size // PATCH) ** 2 // SCALE_FACTOR**2


def make_batch(args: argparse.Namespace, vocab: int, device: torch.device) -> dict[str, Any]:
    """Rows `<|im_start|>User:<image block> prompt<end_of_utterance>\\nAssistant: answer`, labels
    on the answer only; all rows one length, or right-padded to the longest with `--ragged`."""
    g = torch.Generator().manual_seed(1)
    n_img = image_tokens(args.image_size)
    rows, labels = [], []
    for i in range(args.batch_size):
        shrink = (i * args.answer_tokens // (2 * args.batch_size)) if args.ragged else 0
        words = torch.randint(100, min(vocab, 49152), (args.prompt_tokens,), generator=g).tolist()
        answer_len = args.answer_tokens - shrink
        answer = torch.randint(100, 49152, (answer_len,), generator=g).tolist()
        image = [FAKE_AROUND_IMAGE, GLOBAL_IMG] + [IMAGE_TOKEN] * n_img + [FAKE_AROUND_IMAGE]
        prompt = [1] + words[:3] + image + words[3:] + [49279, 198, 9519, 42]  # "...\nAssistant:"
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), 2)
    lab = torch.full((len(rows), length), -100)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        ids[i, : len(row)], lab[i, : len(row)], mask[i, : len(row)] = (
            torch.tensor(row), torch.tensor(label), 1,
        )  # fmt: skip
    side = args.image_size
    pixels = torch.randn(len(rows), 1, 3, side, side, generator=g).clamp(-1, 1)
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": lab.to(device),
        "pixel_values": pixels.to(device),
    }


def add_lora_transformers(model: torch.nn.Module, args: argparse.Namespace) -> torch.nn.Module:
    import peft

    config = peft.LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=LORA_TARGETS,
    )  # fmt: skip
    return peft.get_peft_model(model, config)


def add_lora_vlkit(model: torch.nn.Module, args: argparse.Namespace) -> torch.nn.Module:
    """vlkit's own LoRA (`vlkit.training.lora`) when present, else peft's injection."""
    try:
        from vlkit.training import lora as vlkit_lora
    except ImportError:
        vlkit_lora = None
    apply = getattr(vlkit_lora, "apply_lora", None) if vlkit_lora is not None else None
    spec = (
        f"r={args.lora_r},alpha={args.lora_alpha:g},dropout={args.lora_dropout:g},"
        f"targets={','.join(LORA_TARGETS)}"
    )
    if apply is not None:
        apply(model, spec)  # in place; only the adapters stay trainable
        return model
    import peft

    config = peft.LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=LORA_TARGETS,
    )  # fmt: skip
    model = peft.inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return model


def lora_module_count(model: torch.nn.Module) -> int:
    return sum(1 for name, _ in model.named_modules() if name.endswith("lora_A"))


class Runner:
    """One implementation in one regime: model, optimizer and the step function."""

    def __init__(
        self, impl: str, regime: str, directory: str, args: argparse.Namespace, device: torch.device
    ) -> None:
        self.impl, self.regime, self.device = impl, regime, device
        if impl == "transformers":
            import transformers

            model = transformers.SmolVLMForConditionalGeneration.from_pretrained(
                directory, attn_implementation=args.hf_attn, dtype=torch.float32
            )
            if regime == "lora":
                model = add_lora_transformers(model, args)
        else:
            model = vlkit.from_pretrained(directory)
            if regime == "lora":
                model = add_lora_vlkit(model, args)
        self.model = model.to(device)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.forward = torch.compile(self.model) if args.compile else self.model
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=1e-5, fused=True if device.type == "cuda" else None
        )
        self.autocast = torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"
        )

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        with self.autocast:
            return self.forward(**batch).loss

    def step(self, batch: dict[str, Any]) -> float:
        self.model.train()
        loss = self.loss(batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    @torch.no_grad()
    def eval_loss(self, batch: dict[str, Any]) -> float:
        self.model.eval()
        out = float(self.loss(batch))
        self.model.train()
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def step_memory(runner: Runner, batch: dict[str, Any]) -> tuple[float, float]:
    """(peak MiB, peak above the start MiB) of one step, after a warm-up step (which creates
    the optimizer state and, with --compile, compiles)."""
    runner.step(batch)
    mib = 2**20
    if runner.device.type == "cuda":
        _sync(runner.device)
        torch.cuda.reset_peak_memory_stats(runner.device)
        before = torch.cuda.memory_allocated(runner.device)
        runner.step(batch)
        _sync(runner.device)
        peak = torch.cuda.max_memory_allocated(runner.device)
        return peak / mib, (peak - before) / mib
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    before = (_status_kib("VmRSS") or 0) * 1024
    runner.step(batch)
    peak = (_status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return peak / mib, (peak - before) / mib


def memory_child(args: argparse.Namespace) -> int:
    """Subprocess entry: load one implementation, print its step memory as JSON."""
    directory, impl, regime = args._memory_child
    runner = Runner(impl, regime, directory, args, torch.device("cpu"))
    batch = make_batch(args, FULL["text"]["vocab_size"], torch.device("cpu"))
    runner.step(batch)  # optimizer state exists from here on
    peak, extra = step_memory(runner, batch)
    print(json.dumps({"peak_mib": peak, "step_mib": extra}))
    return 0


def cpu_memory(directory: str, impl: str, regime: str, argv: list[str]) -> dict[str, float]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, *argv, "--_memory-child", directory, impl, regime]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory subprocess {impl}/{regime} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_flops(runner: Runner, batch: dict[str, Any]) -> float:
    """FLOPs of one forward + backward (the optimizer step is negligible), counted."""
    from torch.utils.flop_counter import FlopCounterMode

    model = runner.model
    with FlopCounterMode(display=False) as counter:
        with runner.autocast:
            loss = model(**batch).loss
        loss.backward()
    runner.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def machine_info(device: torch.device) -> dict[str, Any]:
    import peft
    import transformers

    info: dict[str, Any] = {
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__,
        "vlkit": vlkit.__version__,
    }  # fmt: skip
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._memory_child:
        return memory_child(args)
    device = torch.device(args.device)
    info = machine_info(device)
    hardware = info.get("gpu") or f"{info['cpu']} ({info['torch_threads']} threads)"
    print(f"{hardware} | torch {info['torch']} | transformers {info['transformers']} | "
          f"peft {info['peft']} | vlkit {info['vlkit']}")  # fmt: skip
    shape = model_shape(args)
    batch = make_batch(args, shape["text"]["vocab_size"], device)
    tokens = int(batch["attention_mask"].sum())
    child_argv = without_option(argv, "--out")
    results: list[dict[str, Any]] = []
    failed = False
    with tempfile.TemporaryDirectory() as directory:
        n_params = write_checkpoint(shape, directory)
        print(f"model: SmolVLM-256M-shaped, {shape['text']['num_hidden_layers']} text / "
              f"{shape['vision']['num_hidden_layers']} vision layers, {n_params / 1e6:.1f}M "
              f"params; batch {args.batch_size} x {batch['input_ids'].shape[1]} tokens "
              f"({image_tokens(args.image_size)} image tokens of a {args.image_size}px image, "
              f"{int((batch['labels'] != -100).sum())} supervised), {tokens} tokens/step; "
              f"{args.dtype}{' + torch.compile' if args.compile else ''}")  # fmt: skip
        for regime in args.regimes:
            rows, ok = run_regime(regime, directory, args, child_argv, batch, device)
            results += rows
            failed |= not ok
    memory_kind = (
        "CUDA max_memory_allocated"
        if device.type == "cuda"
        else "peak RSS of a fresh process per implementation"
    )
    print(f"\nmedian of {args.rounds} rounds x {args.steps} steps; x = speed vs transformers "
          f"(> 1: vlkit faster); peak MiB = {memory_kind}; +step = above the memory before the step")  # fmt: skip
    print(format_table(results))
    if args.out is not None:
        payload = {
            "machine": info, "config": {k: str(v) if isinstance(v, Path) else v
                                        for k, v in vars(args).items() if not k.startswith("_")},
            "shape": shape, "parameters": n_params, "tokens_per_step": tokens,
            "memory": memory_kind, "rows": results,
        }  # fmt: skip
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 1 if failed else 0


def run_regime(
    regime: str,
    directory: str,
    args: argparse.Namespace,
    child_argv: list[str],
    batch: dict[str, Any],
    device: torch.device,
) -> tuple[list[dict[str, Any]], bool]:
    """Both implementations in one regime: step-0 loss check, interleaved timing, memory.
    Returns the two result rows and whether the losses agreed."""
    tokens = int(batch["attention_mask"].sum())
    flops = None
    runners: dict[str, Runner] = {}
    row = {impl: {"impl": impl, "regime": regime} for impl in IMPLS}
    for impl in IMPLS:
        # Built one after the other; on CUDA each one's memory is measured right away, above
        # what was allocated before it was built (the other model), so the numbers are its own.
        resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        runner = runners[impl] = Runner(impl, regime, directory, args, device)
        row[impl]["trainable"] = sum(p.numel() for p in runner.trainable)
        row[impl]["lora_modules"] = lora_module_count(runner.model)
        row[impl]["loss0"] = runner.eval_loss(batch)
        if device.type == "cuda":
            peak, step = step_memory(runner, batch)
            row[impl]["peak_mib"], row[impl]["step_mib"] = peak - resident / 2**20, step
    ref, got = row["transformers"]["loss0"], row["vlkit"]["loss0"]
    tol = 1e-4 if args.dtype == "fp32" else 2e-2
    same_shape = (row["transformers"]["trainable"], row["transformers"]["lora_modules"]) \
        == (row["vlkit"]["trainable"], row["vlkit"]["lora_modules"])  # fmt: skip
    ok = abs(ref - got) <= tol * abs(ref) and same_shape
    print(f"[{regime}] step-0 loss transformers {ref:.6f} vlkit {got:.6f} "
          f"({'agree' if ok else 'DISAGREE'}); trainable "
          f"{row['transformers']['trainable']:,} / {row['vlkit']['trainable']:,}, LoRA "
          f"modules {row['transformers']['lora_modules']} / "
          f"{row['vlkit']['lora_modules']}", flush=True)  # fmt: skip
    if device.type == "cuda":
        flops = train_flops(runners["transformers"], batch)
    for _ in range(args.warmup):
        for runner in runners.values():
            runner.step(batch)
    times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    cpu: dict[str, list[float]] = {impl: [] for impl in IMPLS}  # process CPU seconds
    order = list(IMPLS)
    for r in range(args.rounds):
        for impl in order[r % 2 :] + order[: r % 2]:
            for _ in range(args.steps):
                _sync(device)
                start, cpu_start = time.perf_counter(), time.process_time()
                runners[impl].step(batch)
                _sync(device)
                times[impl].append(time.perf_counter() - start)
                cpu[impl].append(time.process_time() - cpu_start)
    del runners
    if device.type == "cpu" and not args.no_memory:
        for impl in IMPLS:
            mem = cpu_memory(directory, impl, regime, child_argv)
            row[impl]["peak_mib"], row[impl]["step_mib"] = mem["peak_mib"], mem["step_mib"]
    peak_flops = measured_bf16_peak(device) if device.type == "cuda" else None
    base = statistics.median(times["transformers"])
    cpu_base = statistics.median(cpu["transformers"])
    for impl in IMPLS:
        med = statistics.median(times[impl])
        row[impl]["cpu_ms"] = statistics.median(cpu[impl]) * 1e3
        row[impl]["cpu_speedup"] = cpu_base / statistics.median(cpu[impl])
        row[impl].update(
            step_ms=med * 1e3, best_ms=min(times[impl]) * 1e3,
            tokens_per_s=tokens / med, speedup=base / med, steps_ms=[t * 1e3 for t in times[impl]],
            mfu=(flops / med / peak_flops) if peak_flops and flops else None,
            loss_agree=ok,
        )  # fmt: skip

    return [row[impl] for impl in IMPLS], ok


def without_option(argv: list[str], name: str) -> list[str]:
    """`argv` without `name VALUE` / `name=VALUE` (the memory subprocesses write no JSON)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def measured_bf16_peak(device: torch.device) -> float:
    from train_throughput import measured_matmul_peak

    return measured_matmul_peak(device)


def format_table(rows: list[dict[str, Any]]) -> str:
    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    head = (f"{'regime':<6} {'impl':<13} {'ms/step':>8} {'best ms':>8} {'tok/s':>8} {'x':>5} "
            f"{'cpu ms':>8} {'x cpu':>5} "
            f"{'peak MiB':>9} {'+step MiB':>9} {'MFU':>6} {'loss@0':>9} {'trainable':>12}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        mfu = None if r.get("mfu") is None else 100 * r["mfu"]
        lines.append(
            f"{r['regime']:<6} {r['impl']:<13} {r['step_ms']:>8.0f} {r['best_ms']:>8.0f} "
            f"{r['tokens_per_s']:>8.0f} {r['speedup']:>5.2f} {r['cpu_ms']:>8.0f} "
            f"{r['cpu_speedup']:>5.2f} {fmt(r.get('peak_mib'), '9.0f')} "
            f"{fmt(r.get('step_mib'), '9.0f')} {fmt(mfu, '5.1f') + '%' if mfu is not None else '-':>6} {r['loss0']:>9.5f} "
            f"{r['trainable']:>12,}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
