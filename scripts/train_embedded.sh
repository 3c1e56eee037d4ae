#!/usr/bin/env bash
# Train the embedded default model from scratch, end to end: synthetic data (per curriculum level), tokenizer,
# from-scratch init, then `qwenvl train sft` under a wall-clock budget (the cosine schedule is fitted to it).
#
#   bash scripts/train_embedded.sh                       # 2 CPU cores: ~85 minutes
#   DEVICE=cuda AUTOCAST=bfloat16 PACK=16384 BUDGET_MIN=4 N_TRAIN=60000 bash scripts/train_embedded.sh /tmp/emb
#
# Settings (environment): N_TRAIN, N_HELDOUT, LEVELS (curriculum LEVEL:SHARE mix), BUDGET_MIN, PACK, WORKERS,
# DEVICE, AUTOCAST, LR, MODEL (continue from a trained checkpoint), PYTHON; extra arguments go to `qwenvl train`. Output: OUT_DIR/{data,tokenizer,init,train}; the weights in OUT_DIR/train/export.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-runs/embedded}
shift || true  # any further arguments go to `qwenvl train` (e.g. --warmup-steps 30)
PY=${PYTHON:-.venv/bin/python}
N_TRAIN=${N_TRAIN:-30000}
N_HELDOUT=${N_HELDOUT:-200}
LEVELS=${LEVELS:-0:0.3,1:0.4,2:0.3}
BUDGET_MIN=${BUDGET_MIN:-85}
PACK=${PACK:-4096}
WORKERS=${WORKERS:-$(nproc)}
DEVICE=${DEVICE:-auto}
AUTOCAST=${AUTOCAST:-auto}
LR=${LR:-1.0e-3}
MODEL=${MODEL:-$OUT_DIR/init}  # or a trained checkpoint to continue from
export TOKENIZERS_PARALLELISM=false

if [ ! -f "$OUT_DIR/init/config.json" ]; then
  $PY -m qwenvl.synth.embedded prepare --out "$OUT_DIR" --n-train "$N_TRAIN" --n-heldout "$N_HELDOUT" \
      --levels "$LEVELS" --workers "$WORKERS"
fi
data=$(ls "$OUT_DIR"/data/train-c*.jsonl | paste -sd, -)
$PY -m qwenvl train sft --config configs/embedded.yaml --model "$MODEL" --data "[$data]" \
    --output-dir "$OUT_DIR/train" --time-budget-min "$BUDGET_MIN" --pack-length "$PACK" \
    --num-workers "$WORKERS" --device "$DEVICE" --autocast "$AUTOCAST" --lr "$LR" "$@"
