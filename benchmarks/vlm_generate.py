"""Generation speed of vlkit vs transformers on a SmolVLM-256M-shaped vision-language model.

What it measures: a randomly initialised transformers `SmolVLMForConditionalGeneration` shaped like
SmolVLM2-256M (SigLIP base-patch16-512 vision tower, pixel-shuffle scale factor 4, 30-layer Llama
text model with hidden 576, 9 heads / 3 KV heads, vocab 49280, tied embeddings) is written with
`save_pretrained` to a temporary directory and loaded back with `vlkit.from_pretrained`, so both
implementations hold IDENTICAL weights. The prompt is one 512-px image (64 image tokens) inside
~21 text tokens, repeated over the batch (each row its own random image); decoding is greedy with
no stop token, so every call produces exactly `--max-new-tokens` tokens.

Implementations (`--modes`, default: all that apply to the device):

* `transformers`: `SmolVLMForConditionalGeneration.generate` (dynamic cache);
* `vlkit-dynamic`: `GenerativeVLM.generate`, growing `KVCache`;
* `vlkit-static`: `cache_implementation="static"`, preallocated `StaticKVCache`, eager step;
* `vlkit-graph` (CUDA only): the static cache's one-token step replayed from a CUDA graph
  (`vlkit.models.decoder.fast_decode`); the graph is captured in the warm-up call and reused;
* `vlkit-int8` (CPU fp32 only): `vlkit.inference.quantize_int8` (dynamic int8 linear layers).

Before timing, the greedy continuations at batch 1 are compared token by token with
transformers' (every timed call is checked again); int8 is not expected to match exactly, its
`agree` column is the fraction of new tokens equal to transformers' (on these random weights
it is near 0 at full depth: the random 30-layer model amplifies any perturbation, and even
rounding its linear weights to bf16 changes a fifth of the top-1 tokens; only a trained
checkpoint says how much int8 costs). A mismatch is printed, the timing still runs, and the exit
status is 1. Then, per batch size, the implementations alternate
round after round (the order rotates) and the median round is reported:

* prefill ms: time to first token, i.e. from the `generate` call until the first new token is out
  (embedding, vision encoder, connector, the prompt forward and the first argmax);
* decode tok/s: batch * (new tokens - 1) / (time from the first to the last new token);
* peak memory: on CUDA `torch.cuda.max_memory_allocated` during the call (reset before it); on
  CPU the process' peak RSS during the call (VmHWM, reset through /proc/self/clear_refs). All
  models stay resident, so the CPU number includes every set of weights; `+MiB` is the growth
  above the RSS / allocation before the call.

The fastest round (`best ms`, `best tok/s`) is shown as well: on a shared CPU a neighbouring
process can slow single rounds many times over. The times are taken by a streamer callback (it synchronises CUDA at each token), so one `generate`
call yields both numbers.

Run from the repository root:

    python benchmarks/vlm_generate.py                       # CPU fp32, batch 1 and 2
    python benchmarks/vlm_generate.py --small               # shrunken model, quick check
    python benchmarks/vlm_generate.py --small --layers 2 --max-new-tokens 8 --rounds 1  # smoke
    # GPU (the issue's target: vlkit-graph >= 200 decode tok/s at batch 1), batch scaling:
    python benchmarks/vlm_generate.py --device cuda --dtype bf16 --batch-sizes 1,2,4,8 \
        --max-new-tokens 64 --json vlm_generate_gpu.json

Exit status: 0 on success, 1 if the greedy tokens of the implementations differ.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
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

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMAGE_TOKEN = 49190  # SmolVLM2's <image>
FAKE_AROUND_IMAGE = 49189  # <fake_token_around_image>
GLOBAL_IMG = 49152  # <global-img>
IMAGE_SIZE = 512

# SmolVLM2-256M: SigLIP base-patch16-512 vision tower + SmolLM2-135M-shaped text model.
FULL = {
    "vision": dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        image_size=IMAGE_SIZE, patch_size=16,
    ),
    "text": dict(
        model_type="llama", vocab_size=49280, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        # Wider than the 0.02 default so that greedy decoding of the random model does not
        # collapse into one repeated token (which would make the parity check weak).
        initializer_range=0.1,
    ),
}  # fmt: skip
# --small: same token counts (512 px, patch 16, scale 4 -> 64 image tokens), thin and shallow.
SMALL = {
    "vision": dict(FULL["vision"], hidden_size=192, intermediate_size=768, num_hidden_layers=4,
                   num_attention_heads=3),
    "text": dict(FULL["text"], hidden_size=192, intermediate_size=512, num_hidden_layers=6,
                 num_attention_heads=6, num_key_value_heads=2),
}  # fmt: skip
SCALE_FACTOR = 4

# vlkit modes: model variant ("float" or "int8") and `generate` options.
VLKIT_MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "vlkit-dynamic": ("float", {}),
    "vlkit-static": ("float", {"cache_implementation": "static", "cuda_graph": False}),
    "vlkit-graph": ("float", {"cache_implementation": "static", "cuda_graph": True}),
    "vlkit-int8": ("int8", {}),
}
MODES = ("transformers", *VLKIT_MODES)


@dataclass
class Row:
    """One implementation at one batch size."""

    implementation: str
    batch_size: int
    prefill_ms: float | None = None  # median time to first token
    decode_tok_s: float | None = None  # median over rounds, all rows of the batch together
    ratio_vs_transformers: float | None = None  # decode tok/s / transformers' decode tok/s
    prefill_ratio_vs_transformers: float | None = None  # transformers' prefill ms / this one
    prefill_ms_best: float | None = None  # fastest round (least disturbed by other processes)
    decode_tok_s_best: float | None = None
    peak_mem_mib: float | None = None
    peak_extra_mib: float | None = None
    token_agreement: float | None = None  # share of new tokens equal to transformers' (min)
    prefill_ms_rounds: list[float] = field(default_factory=list)
    decode_tok_s_rounds: list[float] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda if available, else cpu")  # fmt: skip
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                        help="default: bf16 on cuda, fp32 on cpu")  # fmt: skip
    parser.add_argument("--batch-sizes", type=_int_list, nargs="+", default=[[1, 2]],
                        help="e.g. 1,2,4,8 or 1 2 4 8")  # fmt: skip
    parser.add_argument("--modes", type=_str_list, default=None,
                        help=f"comma-separated subset of {','.join(MODES)}; default: all that "
                        "run on the device (graph: CUDA; int8: CPU fp32)")  # fmt: skip
    parser.add_argument("--layers", type=int, default=None,
                        help="override the text model's layer count (quick runs)")  # fmt: skip
    parser.add_argument("--vision-layers", type=int, default=None,
                        help="override the vision tower's layer count")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per batch size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per batch size")
    parser.add_argument("--small", action="store_true", help="shrunken model for a quick run")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--hf-attn", default="sdpa", help="transformers attn_implementation")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype is None:
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    if args.max_new_tokens < 2:
        parser.error("--max-new-tokens must be >= 2 (decode speed needs tokens after the first)")
    args.batch_sizes = [b for group in args.batch_sizes for b in group]
    if args.modes is None:
        args.modes = [m for m in MODES if mode_supported(m, args.device, args.dtype) is None]
    for mode in args.modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if (reason := mode_supported(mode, args.device, args.dtype)) is not None:
            parser.error(f"mode {mode} {reason}")
    if "transformers" not in args.modes:
        args.modes.insert(0, "transformers")  # the reference for tokens and ratios
    return args


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def _str_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def mode_supported(mode: str, device: str, dtype: str) -> str | None:
    """None when `mode` runs on this device and dtype, else the reason it does not."""
    if mode == "vlkit-graph" and device != "cuda":
        return "needs --device cuda (CUDA graphs)"
    if mode == "vlkit-int8" and (device != "cpu" or dtype != "fp32"):
        return "needs --device cpu --dtype fp32 (dynamic int8 kernels are CPU-only)"
    return None


def machine_info(device: str) -> dict[str, Any]:
    """The hardware and software the numbers were measured on."""
    import transformers

    cpu = cpu_name()
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "vlkit": vlkit.__version__,
        "platform": platform.platform(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    return info


def describe(info: dict[str, Any]) -> str:
    hardware = info.get("gpu") or f"{info['cpu']} ({info['torch_threads']} torch threads)"
    return (
        f"{hardware} | torch {info['torch']} | transformers {info['transformers']} | "
        f"vlkit {info['vlkit']} | python {info['python']}"
    )


def model_shape(
    small: bool, layers: int | None = None, vision_layers: int | None = None
) -> dict[str, dict[str, Any]]:
    """Vision and text config dicts: FULL or SMALL, with optional layer-count overrides."""
    base = SMALL if small else FULL
    shape = {"vision": dict(base["vision"]), "text": dict(base["text"])}
    if layers is not None:
        shape["text"]["num_hidden_layers"] = layers
    if vision_layers is not None:
        shape["vision"]["num_hidden_layers"] = vision_layers
    return shape


def build_models(
    shape: dict[str, dict[str, Any]], device: torch.device, dtype: torch.dtype, hf_attn: str
) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    """(transformers model, vlkit model with the same weights, parameter count)."""
    import transformers

    config = transformers.SmolVLMConfig(
        vision_config=dict(shape["vision"]),
        text_config=dict(shape["text"]),
        scale_factor=SCALE_FACTOR,
        image_token_id=IMAGE_TOKEN,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    hf = transformers.SmolVLMForConditionalGeneration(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = vlkit.from_pretrained(tmp).eval()
        del hf
        hf = transformers.SmolVLMForConditionalGeneration.from_pretrained(
            tmp, attn_implementation=hf_attn, dtype=dtype
        ).eval()
    # No stop token: every call produces exactly max_new_tokens tokens.
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    n_params = sum(p.numel() for p in hf.parameters())
    return hf.to(device), ours.to(device=device, dtype=dtype), n_params


def make_inputs(
    batch: int, vocab: int, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> dict[str, torch.Tensor]:
    """One 512-px image (64 image tokens) in a 21-token text prompt (4 special), per row."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(100, min(vocab, 49152), (17,), generator=g).tolist()
    image = [FAKE_AROUND_IMAGE, GLOBAL_IMG] + [IMAGE_TOKEN] * 64 + [FAKE_AROUND_IMAGE]
    ids = [1] + text[:6] + image + text[6:]  # "<|im_start|>User:" ... image ... question
    input_ids = torch.tensor([ids] * batch, device=device)
    pixels = torch.randn(batch, 1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": pixels.to(device=device, dtype=dtype),
    }


class TokenClock:
    """Streamer for both libraries: records when the first and the last new token came out.

    transformers calls `put` with the (B, P) prompt first and then with each (B,) step; vlkit
    calls the object with each (B,) step. 2-D values (the prompt) are ignored."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.first: float | None = None
        self.last: float | None = None
        self.steps = 0

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.steps += 1

    __call__ = put

    def end(self) -> None:
        pass


def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_cpu_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def run_generate(
    name: str,
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    max_new_tokens: int,
    device: torch.device,
    options: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, float, float, float | None, float | None]:
    """(tokens, prefill ms, decode tok/s, peak MiB, peak MiB above the start of the call)."""
    clock = TokenClock(device)
    can_reset = True
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        can_reset = _reset_cpu_peak()
        before = (_status_kib("VmRSS") or 0) * 1024
    start = time.perf_counter()
    with torch.no_grad():
        if name == "transformers":
            out = model.generate(
                **inputs, do_sample=False, max_new_tokens=max_new_tokens, streamer=clock
            )
        else:
            out = model.generate(
                inputs["input_ids"],
                pixel_values=inputs["pixel_values"],
                attention_mask=inputs["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
                streamer=clock,
                **(options or {}),
            )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        hwm = _status_kib("VmHWM")
        if hwm is None or not can_reset:  # lifetime peak only
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = hwm * 1024
    assert clock.first is not None and clock.last is not None
    batch = inputs["input_ids"].shape[0]
    prefill_ms = (clock.first - start) * 1e3
    decode_s = clock.last - clock.first
    decode = batch * (clock.steps - 1) / decode_s if decode_s > 0 else float("nan")
    mib = 2**20
    return out.cpu(), prefill_ms, decode, peak / mib, (peak - before) / mib


def format_table(rows: list[Row]) -> str:
    header = (
        f"{'implementation':<14} {'batch':>5} {'prefill ms':>11} {'prefill x':>9} "
        f"{'decode tok/s':>12} {'decode x':>8} {'best ms':>8} {'best tok/s':>10} "
        f"{'peak MiB':>9} {'+MiB':>7} {'agree':>6}"
    )
    lines = [header, "-" * len(header)]

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for r in rows:
        lines.append(
            f"{r.implementation:<14} {r.batch_size:>5} {fmt(r.prefill_ms, '11.1f')} "
            f"{fmt(r.prefill_ratio_vs_transformers, '9.2f')} {fmt(r.decode_tok_s, '12.1f')} "
            f"{fmt(r.ratio_vs_transformers, '8.2f')} {fmt(r.prefill_ms_best, '8.1f')} "
            f"{fmt(r.decode_tok_s_best, '10.1f')} {fmt(r.peak_mem_mib, '9.0f')} "
            f"{fmt(r.peak_extra_mib, '7.0f')} {fmt(r.token_agreement, '6.3f')}"
        )
    return "\n".join(lines)


def first_difference(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.shape != b.shape:
        return f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    row, col = (a != b).nonzero()[0].tolist()
    return f"row {row}, position {col}: {int(a[row, col])} vs {int(b[row, col])}"


def agreement(ref: torch.Tensor, got: torch.Tensor, prompt_len: int) -> float:
    """Share of new tokens equal to the reference (0 for different shapes)."""
    if ref.shape != got.shape:
        return 0.0
    return float((ref[:, prompt_len:] == got[:, prompt_len:]).float().mean())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    info = machine_info(args.device)
    print(describe(info))
    t0 = time.perf_counter()
    shape = model_shape(args.small, args.layers, args.vision_layers)
    hf, ours, n_params = build_models(shape, device, dtype, args.hf_attn)
    shape_name = "small" if args.small else "SmolVLM2-256M-shaped"
    if args.layers is not None or args.vision_layers is not None:
        shape_name += (
            f" ({shape['text']['num_hidden_layers']} text / "
            f"{shape['vision']['num_hidden_layers']} vision layers)"
        )
    print(
        f"model: {shape_name}, {n_params / 1e6:.1f}M parameters, {args.dtype}, {args.device}, "
        f"transformers attn={args.hf_attn} (built in {time.perf_counter() - t0:.1f} s)"
    )
    variants: dict[str, torch.nn.Module] = {"float": ours}
    if "vlkit-int8" in args.modes:
        from vlkit.inference import quantize_int8

        variants["int8"] = quantize_int8(ours)
    # name -> (model, generate options)
    impls: dict[str, tuple[torch.nn.Module, dict[str, Any]]] = {"transformers": (hf, {})}
    for name in args.modes:
        if name in VLKIT_MODES:
            variant, options = VLKIT_MODES[name]
            impls[name] = (variants[variant], options)
    exact = [name for name in impls if name not in ("transformers", "vlkit-int8")]
    vocab = shape["text"]["vocab_size"]
    n_new = args.max_new_tokens

    def call(name: str, inputs: dict[str, torch.Tensor]) -> tuple:
        model, options = impls[name]
        return run_generate(name, model, inputs, n_new, device, options)

    # Parity first (batch 1): greedy tokens identical to transformers'.
    inputs = make_inputs(1, vocab, device, dtype)
    prompt_len = inputs["input_ids"].shape[1]
    print(f"prompt: {prompt_len} tokens (64 image tokens), 1 image of {IMAGE_SIZE} px per row")
    tokens = {name: call(name, inputs)[0] for name in impls}
    ref = tokens["transformers"]
    mismatch = None
    print(f"greedy tokens ({ref.shape[1] - prompt_len} new tokens):")
    for name, got in tokens.items():
        same = torch.equal(ref, got)
        status = "" if name == "transformers" else f" identical: {same}"
        if name == "vlkit-int8":
            status = f" agreement with transformers: {agreement(ref, got, prompt_len):.3f}"
        print(f"  {name + ':':<14} {got[0, prompt_len:].tolist()}{status}")
        if name in exact and not same and mismatch is None:
            mismatch = f"batch 1 parity, {name}: {first_difference(ref, got)}"
    if mismatch is not None:  # keep going: the timings are still worth having
        print(f"MISMATCH {mismatch}", file=sys.stderr)

    rows: list[Row] = []
    for batch in args.batch_sizes:
        inputs = make_inputs(batch, vocab, device, dtype, seed=batch)
        by_name = {name: Row(name, batch) for name in impls}
        peaks: dict[str, list[tuple[float | None, float | None]]] = {n: [] for n in impls}
        agree: dict[str, list[float]] = {n: [] for n in impls}
        for _ in range(args.warmup):
            for name in impls:
                call(name, inputs)
        order = list(impls)
        for r in range(args.rounds):
            outputs = {}
            shift = r % len(order)
            for name in order[shift:] + order[:shift]:
                tokens, prefill, decode, peak, extra = call(name, inputs)
                outputs[name] = tokens
                by_name[name].prefill_ms_rounds.append(prefill)
                by_name[name].decode_tok_s_rounds.append(decode)
                peaks[name].append((peak, extra))
            ref = outputs["transformers"]
            for name, got in outputs.items():
                agree[name].append(agreement(ref, got, prompt_len))
                if name in exact and not torch.equal(ref, got) and mismatch is None:
                    mismatch = f"batch {batch}, {name}: " + first_difference(ref, got)
        for name, row in by_name.items():
            row.prefill_ms = statistics.median(row.prefill_ms_rounds)
            row.decode_tok_s = statistics.median(row.decode_tok_s_rounds)
            row.prefill_ms_best = min(row.prefill_ms_rounds)
            row.decode_tok_s_best = max(row.decode_tok_s_rounds)
            row.peak_mem_mib = max(p for p, _ in peaks[name] if p is not None)
            row.peak_extra_mib = max(e for _, e in peaks[name] if e is not None)
            row.token_agreement = min(agree[name]) if agree[name] else None
        base = by_name["transformers"]
        for row in by_name.values():
            row.ratio_vs_transformers = row.decode_tok_s / base.decode_tok_s
            row.prefill_ratio_vs_transformers = base.prefill_ms / row.prefill_ms
            rows.append(row)
        print(f"batch {batch} done ({time.perf_counter() - t0:.0f} s)", flush=True)

    mem = "CUDA max_memory_allocated" if device.type == "cuda" else "peak RSS (all models)"
    print(
        f"\n{args.max_new_tokens} new tokens, greedy, median of {args.rounds} rounds; "
        f"x = speed vs transformers (>1 is faster); best = fastest round; "
        f"peak MiB = {mem}; agree = share of new tokens equal to transformers' (worst round)"
    )
    print(format_table(rows))
    if args.json is not None:
        payload = {
            "machine": info,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "model": shape_name,
            "shape": shape,
            "parameters": n_params,
            "prompt_tokens": prompt_len,
            "greedy_identical": mismatch is None,
            "rows": [asdict(r) for r in rows],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    if mismatch is not None:
        print(f"MISMATCH {mismatch}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
