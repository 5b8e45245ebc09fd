#!/usr/bin/env bash
# One short GPU session: image-encoding and training throughput, vlkit vs references.
# Run from the repo root on the GPU machine with $OUT set; wheels for open_clip (and its ftfy)
# may be carried in .whl/ since that machine has no network. Each step has its own timeout.
set -u
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
step() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"; }
step encode_b256 50 python3 benchmarks/encode_throughput.py --device cuda --dtype bf16 --batch-size 256 --json "$OUT/encode_b256.json"
step encode_b1024 50 python3 benchmarks/encode_throughput.py --device cuda --dtype bf16 --batch-size 1024 --json "$OUT/encode_b1024.json"
step train_b1024 80 python3 benchmarks/train_throughput.py --device cuda --batch-size 1024 --json "$OUT/train_b1024.json"
step train_b1024_compile 130 python3 benchmarks/train_throughput.py --device cuda --batch-size 1024 --compile --json "$OUT/train_b1024_compile.json"
step encode_b1024_compile 80 python3 benchmarks/encode_throughput.py --device cuda --dtype bf16 --batch-size 1024 --compile --json "$OUT/encode_b1024_compile.json"
