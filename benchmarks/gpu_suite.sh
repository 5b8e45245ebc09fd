#!/usr/bin/env bash
# One-shot GPU benchmark suite (H100/H200): vlkit vs transformers CLIP ViT-B/32 image encoding.
#
# Runs benchmarks/encode_throughput.py on cuda in bf16 at batch 256 and 1024, eager and with
# --compile, writing <name>.json + <name>.log per run, nvidia-smi.txt, env.txt, suite.log and
# summary.txt into "$OUT". Every command has a `timeout`, capped by the remaining suite budget
# (SUITE_BUDGET_S, default 470 s), so the whole script stays under ~8 minutes.
#
#   OUT=/path/to/results bash benchmarks/gpu_suite.sh
#
# Needs python3 with a CUDA torch. vlkit is used from src/ (PYTHONPATH); missing Python packages
# are pip-installed when the network allows (or from WHEELHOUSE=/dir/of/wheels); without
# transformers only the vlkit rows are measured.
set -u

OUT="${OUT:?set OUT to the output directory}"
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1
cd "$(dirname "$0")/.." || exit 1
PY="${PYTHON:-python3}"
BUDGET="${SUITE_BUDGET_S:-470}"
BENCH=benchmarks/encode_throughput.py
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

log() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$OUT/suite.log"; }

# run NAME CAP_S CMD...: runs CMD with timeout min(CAP_S, budget left), output to $OUT/NAME.log.
run() {
    local name=$1 cap=$2 left=$((BUDGET - SECONDS)) rc
    shift 2
    ((left < cap)) && cap=$left
    if ((cap < 20)); then
        log "SKIP $name: suite budget spent"
        return 0
    fi
    log "start $name (timeout ${cap}s): $*"
    timeout -k 10 "$cap" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    ((rc == 124 || rc == 137)) && log "TIMEOUT $name" || log "end $name: exit $rc"
    return 0
}

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit \
    --format=csv >>"$OUT/nvidia-smi.txt" 2>&1
{
    "$PY" -V
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
    "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|triton|transformers|safetensors|tokenizers|numpy|huggingface)'
} >"$OUT/env.txt" 2>&1

# pip-installs the given packages (import name = pip name) that python cannot import.
install_missing() {
    local group=$1 missing
    shift
    missing=$("$PY" -c "import importlib.util as u, sys
print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))" "$@" 2>/dev/null)
    [ -z "$missing" ] && return 0
    log "missing packages: $missing"
    # shellcheck disable=SC2086  # one word per package
    run "pip_$group" 90 "$PY" -m pip install -q --disable-pip-version-check --retries 0 \
        --timeout 10 ${WHEELHOUSE:+--find-links "$WHEELHOUSE"} $missing
}
install_missing core numpy tqdm safetensors transformers tokenizers huggingface_hub
install_missing text ftfy regex sentencepiece
if ! "$PY" -c "import vlkit" >>"$OUT/env.txt" 2>&1; then
    log "ERROR: vlkit does not import (see env.txt); the runs below will fail"
fi
if ! "$PY" -c "import transformers" >/dev/null 2>&1; then
    log "transformers unavailable: vlkit-only numbers (no comparison)"
fi

for bs in 256 1024; do
    run "bf16_bs${bs}" 75 "$PY" "$BENCH" --device cuda --dtype bf16 --batch-size "$bs" \
        --json "$OUT/bf16_bs${bs}.json"
done
for bs in 256 1024; do
    run "bf16_bs${bs}_compile" 180 "$PY" "$BENCH" --device cuda --dtype bf16 --batch-size "$bs" \
        --compile --json "$OUT/bf16_bs${bs}_compile.json"
done

for f in "$OUT"/bf16_*.log; do
    echo "== $(basename "$f")"
    grep -E '^(machine|transformers attn|vlkit-only|check|.*FAILED)' "$f"
    if grep -q 'image encoder,' "$f"; then awk '/image encoder,/{p=1} p' "$f"; else tail -n 5 "$f"; fi
    echo
done >"$OUT/summary.txt" 2>&1
log "done; summary in $OUT/summary.txt"
cat "$OUT/summary.txt"
