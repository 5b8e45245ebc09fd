#!/usr/bin/env bash
# What issue 17 still needs from a GPU machine, in one prepared script (about 10 minutes on an
# H100 / H200; each step has its own timeout so one hang cannot eat the session). Run from the
# repo root with $OUT set:
#
#     OUT=/path/to/results bash benchmarks/gpu_remaining.sh [finetune] [paths] [decode] [zeroshot]
#
# With no argument all four phases run; name phases to rerun only those. Every step writes its
# log (and JSON where the script has one) under $OUT. The CLIP training throughput steps are
# benchmarks/gpu_run.sh (run on an H200 on 2026-11-27; see benchmarks/RESULTS.md).
#
#   finetune  vlkit vs transformers + peft, SmolVLM-256M shape, bf16, LoRA and full, eager and
#             compiled (issue 17 item 3; goal >= 1.3x step throughput, memory reported)
#   paths     the CUDA-only paths, run once: fp16 training with the grad scaler, bf16 training,
#             chunked retrieval on CUDA (issue 17 item 4)
#   decode    the static-cache / CUDA-graph correctness tests, then vlkit vs transformers decode
#             at batch 1, 4, 16, 64 (issue 17 item 2; goal >= 200 tokens/s at batch 1)
#   zeroshot  `vlkit benchmark` vs `clip_benchmark eval` on CUDA, whole zero-shot run with data
#             loading (issue 14's GPU measurement; clip-benchmark must be importable: carry its
#             wheel in .whl/ as benchmarks/gpu_run.sh does)
set -u
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
: "${OUT:?set OUT to the results directory}"
phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(finetune paths decode zeroshot)
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
step() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"; }

for phase in "${phases[@]}"; do
  case $phase in
    finetune)
      step finetune_eager 150 python3 benchmarks/finetune_step.py --device cuda --batch-size 8 \
        --rounds 3 --out "$OUT/finetune_eager.json"
      step finetune_compiled 200 python3 benchmarks/finetune_step.py --device cuda --batch-size 8 \
        --rounds 3 --compile --no-memory --out "$OUT/finetune_compiled.json"
      ;;
    paths)
      step train_fp16 90 python3 -m vlkit train model=tiny data.source=shapes \
        data.num_samples=2048 optim.batch_size=256 optim.max_steps=40 device=cuda precision=fp16 \
        out_dir="$OUT/train_fp16"
      step train_bf16 90 python3 -m vlkit train model=tiny data.source=shapes \
        data.num_samples=2048 optim.batch_size=256 optim.max_steps=40 device=cuda precision=bf16 \
        out_dir="$OUT/train_bf16"
      step retrieval_cuda 90 python3 benchmarks/retrieval_scale.py --device cuda \
        --texts 200000 --images 40000
      ;;
    decode)
      step fast_decode_tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_fast_decode.py
      step vlm_generate 240 python3 benchmarks/vlm_generate.py --device cuda --dtype bf16 \
        --batch-sizes 1,4,16,64 --max-new-tokens 64 --rounds 2 --json "$OUT/vlm_generate_gpu.json"
      ;;
    zeroshot)
      step zeroshot_eval_cuda 240 python3 benchmarks/zeroshot_eval.py --device cuda \
        --images 4096 --batch-size 256 --workers 8 --rounds 2
      ;;
    *)
      echo "unknown phase '$phase' (finetune, paths, decode, zeroshot)" >&2
      exit 2
      ;;
  esac
done
