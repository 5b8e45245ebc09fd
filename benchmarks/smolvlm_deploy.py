"""Deploying SmolVLM on a CPU: transformers, vlkit torch (fp32 / INT8 / INT4) and onnxruntime.

What it measures (issue 15, "Performance"): one randomly initialised SmolVLM2-256M-shaped model
(`vlm_generate.py`'s shape: SigLIP-B/16 at 512 px, pixel shuffle 4, 30-layer Llama with hidden
576, vocab 49280, tied embeddings, initializer range 0.1) is written once with transformers'
`save_pretrained`, exported once (the exporter's onnxruntime-vs-torch check at `--export-atol`,
1e-2: the random 30-layer model amplifies float32 reassociation, its logits differed by 4.7e-4
> the default 1e-4; the measured difference is in the JSON) with `vlkit.inference.smolvlm_onnx_export.export_smolvlm_onnx(quantize="int4")` (float32 and
MatMulNBits INT4 files, block size 32) plus INT8 files of the same float32 graphs by
`quantize_onnx_int8` (the function the exporter's `quantize="int8"` calls). Then each
implementation runs in its own subprocess (so its RSS is its own), with 1 and with 2 threads:

* `transformers-fp32`: `SmolVLMForConditionalGeneration.generate` (sdpa, dynamic cache);
* `vlkit-fp32`, `vlkit-int8`, `vlkit-int4`: `vlkit.from_pretrained` + `GenerativeVLM.generate`,
  INT8 = `quantize_int8` (dynamic, fbgemm), INT4 = `quantize_int4` (weight-only, group 32,
  PyTorch's `_weight_int4pack_mm_for_cpu`);
* `ort-fp32`, `ort-int8`, `ort-int4`: `vlkit.inference.onnx_vlm.OnnxVLM` (onnxruntime only).

Per batch size (1 and 4; one random 512-px image per row, 64 image tokens in an 85-token prompt,
greedy, no stop token, `--max-new-tokens` new tokens): prefill ms = from the call to the first new
token (vision tower, connector, prompt forward); decode tok/s = batch * (tokens - 1) / (first to
last token); median of `--rounds` rounds after one warm-up call at batch 1. Per process: size on
disk of the weights it loads (safetensors / the variant's three .onnx files; for the torch INT8 /
INT4 rows the serialised quantized state dict), RSS once loaded, and peak RSS while generating
(VmHWM reset after loading). `agree` = share of batch-1 greedy tokens equal to transformers'
(random weights: quantized rows are not expected to agree, see vlm_generate.py; accuracy is
measured on a trained model by smolvlm_deploy_accuracy.py).

    python benchmarks/smolvlm_deploy.py --json smolvlm_deploy.json          # the table (~40 min)
    python benchmarks/smolvlm_deploy.py --small --layers 2 --vision-layers 1 --max-new-tokens 4 \
        --rounds 1 --threads 1                                              # smoke run
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from vlm_generate import (
    IMAGE_TOKEN,
    SCALE_FACTOR,
    _reset_cpu_peak,
    _status_kib,
    machine_info,
    make_inputs,
    model_shape,
    run_generate,
)

CONFIGS = ("transformers-fp32", "vlkit-fp32", "vlkit-int8", "vlkit-int4",
           "ort-fp32", "ort-int8", "ort-int4")  # fmt: skip
ORT_VARIANTS = {"ort-fp32": "fp32", "ort-int8": "int8", "ort-int4": "q4"}


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    parser.add_argument("--threads", type=_int_list, default=[1, 2], help="e.g. 1,2")
    parser.add_argument("--batch-sizes", type=_int_list, default=[1, 4], help="e.g. 1,4")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per batch size")
    parser.add_argument("--small", action="store_true", help="shrunken model (quick check)")
    parser.add_argument("--layers", type=int, default=None, help="text layers (quick runs)")
    parser.add_argument("--vision-layers", type=int, default=None)
    parser.add_argument("--export-atol", type=float, default=1e-2,
                        help="the exporter's onnxruntime-vs-torch logit check (see docstring)")  # fmt: skip
    parser.add_argument("--work", type=Path, default=None, help="keep the model files here")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # CONFIG (subprocess)
    args = parser.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {', '.join(CONFIGS)}")
    if "transformers-fp32" not in args.configs:
        args.configs.insert(0, "transformers-fp32")  # the reference of the ratios
    if args.max_new_tokens < 2:
        parser.error("--max-new-tokens must be >= 2 (decode speed needs tokens after the first)")
    return args


# ------------------------------------------------------------------------------------------
# Files (parent process)


def write_model(shape: dict[str, dict[str, Any]], work: Path, atol: float) -> dict[str, Any]:
    """The transformers checkpoint (WORK/hf) and its ONNX export with fp32, int8, q4 (WORK/onnx)."""
    import transformers

    from vlkit.inference.onnx_int8 import quantize_onnx_int8
    from vlkit.inference.smolvlm_onnx_export import export_smolvlm_onnx

    hf_dir, onnx_dir = work / "hf", work / "onnx"
    if not hf_dir.exists():
        config = transformers.SmolVLMConfig(
            vision_config=dict(shape["vision"]), text_config=dict(shape["text"]),
            scale_factor=SCALE_FACTOR, image_token_id=IMAGE_TOKEN, tie_word_embeddings=True,
        )  # fmt: skip
        torch.manual_seed(0)
        model = transformers.SmolVLMForConditionalGeneration(config).eval()
        model.generation_config.eos_token_id = None  # every call makes max_new_tokens tokens
        model.generation_config.pad_token_id = 0
        model.save_pretrained(hf_dir)
        del model
    if not onnx_dir.exists():
        started = time.perf_counter()
        report = export_smolvlm_onnx(hf_dir, onnx_dir, quantize="int4", block_size=32, atol=atol,
                                     progress=lambda note: print(f"  export: {note}", flush=True))  # fmt: skip
        print(f"  export: max |onnxruntime - torch| of the logits {report.max_abs_diff}")
        for part in ("vision_encoder", "decoder_model_merged"):
            data = quantize_onnx_int8((onnx_dir / "onnx" / f"{part}.onnx").read_bytes())
            (onnx_dir / "onnx" / f"{part}_int8.onnx").write_bytes(data)
        print(f"  ONNX export + INT8 files: {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads((onnx_dir / "onnx" / "vlkit_export.json").read_text())


def onnx_size_mib(onnx_dir: Path, variant: str) -> float:
    from vlkit.inference.onnx_vlm import onnx_vlm_files

    files = onnx_vlm_files(onnx_dir, variant).values()
    extra = [p for f in files for p in f.parent.glob(f.name + ".data")]  # external weights
    return sum(f.stat().st_size for f in [*files, *extra]) / 2**20


# ------------------------------------------------------------------------------------------
# One implementation (subprocess)


class OnnxClock:
    """Streamer of `OnnxVLM.generate`: when the first and the last new token came out."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None
        self.steps = 0

    def __call__(self, tokens: Any) -> None:
        now = time.perf_counter()
        self.first = self.first if self.first is not None else now
        self.last, self.steps = now, self.steps + 1


def load(config: str, hf_dir: Path, onnx_dir: Path, threads: int) -> tuple[Any, float]:
    """(model, size on disk in MiB) of one configuration."""
    if config.startswith("ort-"):
        from vlkit.inference.onnx_runtime import onnx_session
        from vlkit.inference.onnx_vlm import OnnxVLM, onnx_vlm_files

        variant = ORT_VARIANTS[config]
        files = onnx_vlm_files(onnx_dir, variant)
        sessions = {part: onnx_session(path, None, threads) for part, path in files.items()}
        model_config = json.loads((onnx_dir / "config.json").read_text())
        # No processor needed (the benchmark feeds token ids and pixels itself; the random
        # model has no tokenizer): a stand-in that only knows the image token.
        processor = SimpleNamespace(image_token_id=IMAGE_TOKEN)
        model = OnnxVLM(sessions, processor, model_config, eos_token_id=[], pad_token_id=0)  # type: ignore[arg-type]
        return model, onnx_size_mib(onnx_dir, variant)
    size = (hf_dir / "model.safetensors").stat().st_size / 2**20
    if config == "transformers-fp32":
        import transformers

        model = transformers.SmolVLMForConditionalGeneration.from_pretrained(
            hf_dir, attn_implementation="sdpa", dtype=torch.float32
        ).eval()
        return model, size
    import vlkit
    from vlkit.inference import quantize_int8
    from vlkit.inference.quantize_int4 import quantize_int4

    model = vlkit.from_pretrained(hf_dir).eval()
    if config in ("vlkit-int8", "vlkit-int4"):
        quantize = quantize_int8 if config == "vlkit-int8" else quantize_int4
        model = quantize(model, inplace=True)
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        size = len(buffer.getvalue()) / 2**20
    return model, size


def generate_once(config: str, model: Any, inputs: dict[str, torch.Tensor], new: int) -> tuple:
    """(tokens (B, P + new), prefill ms, decode tok/s) of one greedy call."""
    if not config.startswith("ort-"):
        name = "transformers" if config.startswith("transformers") else "vlkit"
        tokens, prefill, decode, _, _ = run_generate(name, model, inputs, new, torch.device("cpu"))
        return tokens, prefill, decode
    clock = OnnxClock()
    start = time.perf_counter()
    pixels = inputs["pixel_values"]
    mask = torch.ones(pixels.shape[0], pixels.shape[1], *pixels.shape[3:], dtype=torch.bool)
    out = model.generate(inputs["input_ids"], inputs["attention_mask"], pixels, mask,
                         max_new_tokens=new, eos_token_id=[], pad_token_id=0,
                         streamer=clock)  # fmt: skip
    assert clock.first is not None and clock.last is not None
    batch = inputs["input_ids"].shape[0]
    decode = batch * (clock.steps - 1) / (clock.last - clock.first)
    return torch.from_numpy(out), (clock.first - start) * 1e3, decode


def worker(args: argparse.Namespace, hf_dir: Path, onnx_dir: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    config = args.worker
    model, size = load(config, hf_dir, onnx_dir, threads)
    gc.collect()
    rss_loaded = (_status_kib("VmRSS") or 0) / 1024
    _reset_cpu_peak()
    vocab = json.loads((hf_dir / "config.json").read_text())["text_config"]["vocab_size"]
    result: dict[str, Any] = {"config": config, "threads": threads, "size_mib": size,
                              "rss_loaded_mib": rss_loaded, "batches": {}}  # fmt: skip
    generate_once(config, model, make_inputs(1, vocab, torch.device("cpu"), torch.float32), 2)
    for batch in args.batch_sizes:
        inputs = make_inputs(batch, vocab, torch.device("cpu"), torch.float32, seed=batch)
        runs = [generate_once(config, model, inputs, args.max_new_tokens)
                for _ in range(args.rounds)]  # fmt: skip
        result["batches"][str(batch)] = {
            "prefill_ms": statistics.median(r[1] for r in runs),
            "decode_tok_s": statistics.median(r[2] for r in runs),
            "prefill_ms_rounds": [r[1] for r in runs],
            "decode_tok_s_rounds": [r[2] for r in runs],
        }
        if batch == 1:
            prompt = inputs["input_ids"].shape[1]
            result["greedy_batch1"] = runs[0][0][0, prompt:].tolist()
    result["peak_rss_generate_mib"] = (_status_kib("VmHWM") or 0) / 1024
    return result


# ------------------------------------------------------------------------------------------
# Table (parent process)


def format_table(results: list[dict], batches: list[int]) -> str:
    """Markdown: one row per (threads, config), ratios against transformers-fp32's decode."""
    base = {(r["threads"], b): r["batches"][str(b)]["decode_tok_s"]
            for r in results if r["config"] == "transformers-fp32" for b in batches}  # fmt: skip
    head = ["threads", "implementation"]
    for b in batches:
        head += [f"b{b} prefill ms", f"b{b} decode tok/s", f"b{b} x transformers"]
    head += ["size MiB", "RSS loaded MiB", "peak RSS MiB", "agree"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [str(r["threads"]), r["config"]]
        for b in batches:
            row = r["batches"][str(b)]
            ratio = row["decode_tok_s"] / base[(r["threads"], b)]
            cells += [f"{row['prefill_ms']:.0f}", f"{row['decode_tok_s']:.1f}", f"{ratio:.2f}"]
        agree = r.get("agreement")
        cells += [f"{r['size_mib']:.0f}", f"{r['rss_loaded_mib']:.0f}",
                  f"{r['peak_rss_generate_mib']:.0f}", "-" if agree is None else f"{agree:.2f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shape = model_shape(args.small, args.layers, args.vision_layers)
    if args.worker is not None:  # a subprocess: one configuration, JSON on the last line
        hf_dir, onnx_dir = args.work / "hf", args.work / "onnx"
        print(json.dumps(worker(args, hf_dir, onnx_dir, args.threads[0])))
        return 0
    logging.getLogger().setLevel(logging.WARNING)  # onnxruntime's quantizer logs every tensor
    info = machine_info("cpu")
    print(f"{info['cpu']} ({info['cpu_count']} cores) | torch {info['torch']} | "
          f"transformers {info['transformers']} | vlkit {info['vlkit']}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        started = time.perf_counter()
        export = write_model(shape, work, args.export_atol)
        print(f"model files ready in {time.perf_counter() - started:.0f} s", flush=True)
        results = []
        for threads in args.threads:
            for config in args.configs:
                command = [sys.executable, __file__, "--worker", config, "--work", str(work),
                           "--threads", str(threads), "--batch-sizes",
                           ",".join(map(str, args.batch_sizes)), "--rounds", str(args.rounds),
                           "--max-new-tokens", str(args.max_new_tokens)]  # fmt: skip
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode:
                    print(done.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{config} with {threads} thread(s) failed")
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                r = results[-1]
                print(f"  {threads} thread(s) {config}: " + ", ".join(
                    f"b{b} {v['prefill_ms']:.0f} ms / {v['decode_tok_s']:.1f} tok/s"
                    for b, v in r["batches"].items()), flush=True)  # fmt: skip
    for r in results:
        ref = next(x for x in results if x["config"] == "transformers-fp32"
                   and x["threads"] == r["threads"])  # fmt: skip
        pairs = list(zip(ref["greedy_batch1"], r["greedy_batch1"], strict=True))
        r["agreement"] = sum(a == b for a, b in pairs) / len(pairs)
    print(f"\n{args.max_new_tokens} new tokens, greedy, median of {args.rounds} rounds; "
          "x transformers = decode tok/s / transformers-fp32's at the same threads and batch")  # fmt: skip
    print(format_table(results, args.batch_sizes))
    if args.json is not None:
        payload = {"machine": info, "shape": shape, "max_new_tokens": args.max_new_tokens,
                   "rounds": args.rounds, "export": export, "results": results}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
