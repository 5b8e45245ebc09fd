#!/usr/bin/env bash
# One short GPU session for VLM decoding (issue: >= 200 decode tokens/s at batch 1): the CUDA-graph
# correctness test, then vlkit (dynamic, static, CUDA graph) vs transformers generate on the
# random SmolVLM2-256M-shaped model, bf16, batch 1/2/4/8. Run from the repo root with $OUT set.
set -u
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
step() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"; }
step fast_decode_tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_fast_decode.py
step vlm_generate 360 python3 benchmarks/vlm_generate.py --device cuda --dtype bf16 --batch-sizes 1,2,4,8 --max-new-tokens 64 --rounds 3 --json "$OUT/vlm_generate_gpu.json"
