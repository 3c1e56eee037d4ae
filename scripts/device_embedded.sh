#!/usr/bin/env bash
# One prepared GPU-machine run (the device tool; results under $OUT):
#   1. training throughput of the issue-6 probe on 2 CPU cores of that machine (AMX bf16), ours vs transformers,
#      while the synthetic data for the embedded model is generated on the other cores;
#   2. the embedded model trained from scratch on the GPU under a time budget (scripts/train_embedded.sh);
#   3. the bf16 weights + tokenizer + metrics packed as $OUT/emb.tgz.* (split below the 16 MiB return limit).
# Env: BUDGET_MIN (both stages), PACK. Needs PyAV (carried as a wheel; see docs/embedded-model.md).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
E=/tmp/emb
T0=$(date +%s)
TOTAL_S=${TOTAL_S:-470}  # the whole script ends by then: the training budget is what is left after the data
mount -o remount,size=64G /dev/shm 2>/dev/null || true  # batches travel from loader workers through /dev/shm
N=$(nproc)
PY=${PY:-python3}
pin() { if [ "$N" -ge 4 ]; then taskset -c "$@"; else shift; "$@"; fi; }  # taskset CPUS CMD... (skip on small hosts)
W=$(( N > 3 ? N - 2 : 1 ))
{ lscpu | grep -E "Model name|^CPU\(s\)"; grep -o -m1 -w "amx_bf16\|avx512_bf16" /proc/cpuinfo | sort -u;
  df -h /dev/shm; nvidia-smi --query-gpu=name,memory.total --format=csv; $PY -c "import torch; print('torch', torch.__version__)"; } \
  > "$OUT/machine.txt" 2>&1
DATA_ONLY=1 PYTHON=$PY GEN_WORKERS=$W pin 2-$((N - 1)) bash scripts/train_embedded.sh $E > "$OUT/prepare.log" 2>&1 &
prep=$!
CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=2 pin 0,1 timeout "${BENCH_S:-150}" $PY bench/train.py --sizes 6m \
  --modes fp32,bf16 --steps 3 --profile --out "$OUT/bench-train-2core.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?" >> "$OUT/bench.log"
wait $prep; echo "prepare rc=$?" >> "$OUT/prepare.log"
left=$(( TOTAL_S - ($(date +%s) - T0) - 60 ))  # 60 s: start-up, export and packing
BUDGET=${BUDGET_MIN:-$(python3 -c "print(round(max(0.5, $left / 60), 2))")}
echo "training budget $BUDGET min" >> "$OUT/prepare.log"
train() { STAGES=ab PYTHON=$PY DEVICE=${DEVICE:-cuda} AUTOCAST=${AUTOCAST:-bfloat16} PACK="${PACK:-16384}" WORKERS=$1 \
  BUDGET_MIN=$2 bash scripts/train_embedded.sh $E >> "$OUT/train.log" 2>&1; }
train $W "$BUDGET"; rc=$?
echo "train rc=$rc" >> "$OUT/train.log"
if [ $rc -ne 0 ]; then  # e.g. a small /dev/shm: once more without loader processes, in what time is left
  rm -rf $E/a $E/b; left=$(( TOTAL_S - ($(date +%s) - T0) - 45 ))
  [ $left -gt 40 ] && { train 0 "$(python3 -c "print(round($left / 60, 2))")"; echo "retry rc=$?" >> "$OUT/train.log"; }
fi
$PY scripts/export_bf16.py /tmp/emb/b/export /tmp/pkg/embedded \
  && cp /tmp/emb/a/metrics.jsonl /tmp/pkg/metrics-a.jsonl && cp /tmp/emb/b/metrics.jsonl /tmp/pkg/metrics-b.jsonl
echo "pack rc=$?" >> "$OUT/train.log"
tar czf - -C /tmp pkg | split -b 15M - "$OUT/emb.tgz."
ls -la "$OUT"
