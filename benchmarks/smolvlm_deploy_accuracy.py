"""What quantization costs on a trained SmolVLM: easy-VQA test accuracy in fp32, INT8 and INT4,
in PyTorch and in onnxruntime, side by side on the same questions.

The model is `examples/finetune_smolvlm_easy_vqa.py`'s: a tiny SmolVLM (SigLIP 2 x 64 on one 64-px
view, 2-layer width-128 Llama) taught easy-VQA with LoRA, merged and saved in transformers'
format (`OUT/run/final`; 0.706 exact match after 600 steps, benchmarks/RESULTS.md). Rows:

* `torch fp32` / `torch int8` / `torch int4`: `vlkit.inference.load_vlm(final, int8=..., int4=...)`
  (dynamic INT8 `quantize_int8`; weight-only INT4 `quantize_int4`, group 32);
* `onnx fp32` / `onnx int8` / `onnx int4`: `export_smolvlm_onnx(final, ..., quantize="int8")` and
  `quantize="int4"` (MatMulNBits, block 32), run by `load_vlm(export, onnx_variant=...)`.

Per row: easy-VQA exact match (greedy answers of at most 4 tokens, as the example scores them), and
against `torch fp32`: the share of identical answers, the share of equal greedy tokens (position
by position), and the mean cosine of the next-token logits at the end of each prompt. Answers/s
include generation (one question at a time).

    python examples/finetune_smolvlm_easy_vqa.py --out runs/examples/finetune    # ~25 min, once
    python benchmarks/smolvlm_deploy_accuracy.py runs/examples/finetune --json acc.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from machine import cpu_name
from tqdm import tqdm

try:
    import vlkit
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import vlkit

from vlkit.inference import load_vlm
from vlkit.inference.vlm_pipeline import VLMPipeline

ROWS = ("torch fp32", "torch int8", "torch int4", "onnx fp32", "onnx int8", "onnx int4")


def prompt_logits(pipeline: VLMPipeline, inputs: Any) -> torch.Tensor:
    """(V,) float32 logits of the token after the prompt (what the first greedy step reads)."""
    if not hasattr(pipeline, "onnx"):
        return pipeline.model(inputs.input_ids, **inputs.model_inputs).logits[0, -1].float()
    onnx, model_inputs = pipeline.onnx, inputs.model_inputs
    ids = inputs.input_ids.numpy()
    embeds = onnx.embed(ids, model_inputs.get("pixel_values"),
                        model_inputs.get("pixel_attention_mask"))  # fmt: skip
    length = ids.shape[1]
    empty = np.zeros((1, onnx.num_kv_heads, 0, onnx.head_dim), dtype=np.float32)  # no past
    logits, _ = onnx.decode_step(embeds, np.ones((1, length), dtype=np.int64),
                                 np.arange(length, dtype=np.int64)[None],
                                 [empty] * len(onnx.past_names))  # fmt: skip
    return torch.from_numpy(logits[0, -1]).float()


@torch.no_grad()
def answer_all(pipeline: VLMPipeline, questions: list, name: str) -> dict[str, Any]:
    """Greedy answers (token ids and text), prompt logits and answers/s of one pipeline."""
    from vlkit.recipes.finetune_eval import _pil

    tokens, texts, logits = [], [], []
    started = time.perf_counter()
    for question in tqdm(questions, desc=name, leave=False):
        inputs = pipeline.prepare([_pil(image) for image in question.images], question.prompt)
        new = pipeline.generate(inputs, max_new_tokens=4)
        tokens.append(new)
        texts.append(pipeline.decode(new).strip())
        logits.append(prompt_logits(pipeline, inputs))
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "texts": texts, "logits": torch.stack(logits),
            "answers_per_s": len(questions) / seconds}  # fmt: skip


def token_agreement(reference: list[list[int]], got: list[list[int]]) -> float:
    """Share of equal tokens, position by position (a missing token counts as different)."""
    same = total = 0
    for a, b in zip(reference, got, strict=True):
        width = max(len(a), len(b))
        same += sum(x == y for x, y in zip(a, b, strict=False))
        total += width
    return same / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("finetune_out", type=Path, help="the example's --out directory")
    parser.add_argument("--limit", type=int, default=None, help="first N test questions")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="keep the ONNX exports here")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    final, test_file = args.finetune_out / "run" / "final", args.finetune_out / "test.parquet"
    for path in (final, test_file):
        if not path.exists():
            parser.error(f"{path}: not found (run examples/finetune_smolvlm_easy_vqa.py first)")
    logging.getLogger().setLevel(logging.WARNING)  # onnxruntime's quantizer logs every tensor
    torch.set_num_threads(args.threads)
    from vlkit.data.datasets.conversation_formats import read_conversations
    from vlkit.inference.smolvlm_onnx_export import export_smolvlm_onnx
    from vlkit.recipes.finetune_eval import heldout_questions, score_answers

    questions = heldout_questions(read_conversations(test_file).rows)[: args.limit]
    results: dict[str, dict[str, Any]] = {}
    exports: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for quantize in ("int8", "int4"):
            out = work / f"onnx_{quantize}"
            if not out.exists():
                exports[quantize] = export_smolvlm_onnx(final, out, quantize=quantize).to_dict()
        pipelines = {
            "torch fp32": lambda: load_vlm(final),
            "torch int8": lambda: load_vlm(final, int8=True),
            "torch int4": lambda: load_vlm(final, int4=True),
            "onnx fp32": lambda: load_vlm(work / "onnx_int8", onnx_variant="fp32"),
            "onnx int8": lambda: load_vlm(work / "onnx_int8", onnx_variant="int8"),
            "onnx int4": lambda: load_vlm(work / "onnx_int4", onnx_variant="q4"),
        }
        for name in ROWS:
            results[name] = answer_all(pipelines[name](), questions, name)
    reference = results["torch fp32"]
    rows = []
    for name in ROWS:
        r = results[name]
        rows.append({
            "weights": name,
            "exact_match": score_answers(r["texts"], questions)["exact_match"],
            "same_answer": float(np.mean([a == b for a, b in
                                          zip(reference["texts"], r["texts"], strict=True)])),
            "token_agreement": token_agreement(reference["tokens"], r["tokens"]),
            "logit_cosine": float(F.cosine_similarity(r["logits"], reference["logits"]).mean()),
            "answers_per_s": r["answers_per_s"],
        })  # fmt: skip
    print(f"{final}: {len(questions)} easy-VQA test questions, {cpu_name()}, {args.threads} "
          f"thread(s), torch {torch.__version__}, vlkit {vlkit.__version__}")  # fmt: skip
    print("| weights | exact match | same answer as torch fp32 | greedy tokens equal | "
          "mean logit cosine | answers/s |\n|---|---|---|---|---|---|")  # fmt: skip
    for row in rows:
        print(f"| {row['weights']} | {row['exact_match']:.4f} | {row['same_answer']:.3f} | "
              f"{row['token_agreement']:.3f} | {row['logit_cosine']:.5f} | "
              f"{row['answers_per_s']:.1f} |")  # fmt: skip
    if args.json is not None:
        payload = {"model": str(final), "questions": len(questions), "threads": args.threads,
                   "rows": rows, "exports": exports}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
