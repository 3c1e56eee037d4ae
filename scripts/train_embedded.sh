#!/usr/bin/env bash
# Train the embedded default model from scratch, end to end (docs/embedded-model.md, "How the shipped model was made"):
#   data   stage A: one-shape grounding scenes at 112 x 112; stage B: every task at curriculum levels 0 and 1
#          (grounding 12k records, documents + GUI 1.2k, text + video 800); the report's held-out files; all seeded
#   init   the embedded shape (qwenvl/synth/embedded.py), seed 0, with the package's tokenizer
#          (TOKENIZER=train: a new one trained on stage B's corpus)
#   A      `qwenvl train sft --config configs/embedded.yaml` (40-minute budget; towers at 1/100 of the LM's rate)
#   B      continued from A's export on the mix (45-minute budget, LR 6e-4); the weights end in OUT_DIR/b/export
#   C, D   (STAGES=abcd: the shipped model's continuations, docs/embedded-model.md) C: B's mix again, 30 min at
#          4e-4; D: A's one-size scenes back in the mix, 80 min at 4e-4; the weights end in OUT_DIR/d/export
#
#   bash scripts/train_embedded.sh                        # 2 CPU cores: ~1.5 min of data, then 85 min of training
#   DEVICE=cuda AUTOCAST=bfloat16 BUDGET_MIN=8 bash scripts/train_embedded.sh /tmp/emb
#   .venv/bin/python scripts/ship_embedded.py runs/embedded/b/export --heldout runs/embedded/data/heldout-c1.jsonl --objects 2
#
# Settings (environment): STAGES (ab, the default, or abcd), BUDGET_MIN (stages A and B, split 40:45; or BUDGET_A / BUDGET_B; BUDGET_C, BUDGET_D), PACK, WORKERS, GEN_WORKERS, DEVICE,
# AUTOCAST, TOKENIZER (a directory, or "train"), DATA_ONLY=1 (stop after the data), PYTHON. Extra arguments go
# to every `qwenvl train` call. A stage whose export exists is skipped (delete OUT_DIR/a, .../b, ... to redo it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-runs/embedded}
shift || true
PY=${PYTHON:-.venv/bin/python}
PACK=${PACK:-2048}
WORKERS=${WORKERS:-0}                    # loader processes during training (0: in the training process)
GEN_WORKERS=${GEN_WORKERS:-$(nproc)}     # processes rendering the data
DEVICE=${DEVICE:-auto}
AUTOCAST=${AUTOCAST:-auto}
TOKENIZER=${TOKENIZER:-qwenvl/embedded}
if [ -n "${BUDGET_MIN:-}" ]; then
  BUDGET_A=${BUDGET_A:-$($PY -c "print(round($BUDGET_MIN * 40 / 85, 2))")}
  BUDGET_B=${BUDGET_B:-$($PY -c "print(round($BUDGET_MIN * 45 / 85, 2))")}
fi
BUDGET_A=${BUDGET_A:-40}
BUDGET_B=${BUDGET_B:-45}
export TOKENIZERS_PARALLELISM=false
D=$OUT_DIR/data

build() {  # OUT SPLIT CURRICULUM TASKS N SEED [more build args]
  local out=$1 split=$2 lvl=$3 tasks=$4 n=$5 seed=$6; shift 6
  [ -f "$out/$split.jsonl" ] || $PY -m qwenvl.synth.build --out "$out" --split "$split" --curriculum "$lvl" \
      --tasks "$tasks" --n "$n" --seed "$seed" --workers "$GEN_WORKERS" "$@"
}
build "$D/a" train 0 grounding 3000 1 --image-size 112 112
build "$D/a" heldout 0 grounding 40 1001 --image-size 112 112
build "$D/g0" train 0 grounding 1500 11
build "$D/g1" train 1 grounding 1500 12
build "$D/o0" train 0 documents,gui 300 13
build "$D/o1" train 1 documents,gui 300 14
build "$D/t0" train 0 text,video 100 15
build "$D/t1" train 1 text,video 100 16
# the report's held-out files (docs/embedded-model.md)
[ -f "$D/heldout-c0.jsonl" ] || $PY -m qwenvl.synth.build --out "$D" --split heldout --n 20 --seed 1 --curriculum 0 \
    --name heldout-c0 --workers "$GEN_WORKERS"
[ -f "$D/heldout-c1.jsonl" ] || $PY -m qwenvl.synth.build --out "$D" --split heldout --n 20 --seed 1001 \
    --curriculum 1 --name heldout-c1 --workers "$GEN_WORKERS"
[ "${DATA_ONLY:-0}" = 1 ] && exit 0
mix="$D/g0/train.jsonl,$D/g1/train.jsonl,$D/o0/train.jsonl,$D/o1/train.jsonl,$D/t0/train.jsonl,$D/t1/train.jsonl"

if [ ! -f "$OUT_DIR/init/config.json" ]; then
  if [ "$TOKENIZER" = train ]; then
    $PY -m qwenvl.synth.embedded init --out "$OUT_DIR/init" --corpus ${mix//,/ } --seed 0
  else
    $PY -m qwenvl.synth.embedded init --out "$OUT_DIR/init" --tokenizer "$TOKENIZER" --seed 0
  fi
fi
common=(--pack-length "$PACK" --num-workers "$WORKERS" --device "$DEVICE" --autocast "$AUTOCAST" --eval-every 500
        --set eval_max_samples=60 --set eval_media_gap=true)
if [ ! -f "$OUT_DIR/a/export/config.json" ]; then
  $PY -m qwenvl train sft --config configs/embedded.yaml --model "$OUT_DIR/init" --data "[$D/a/train.jsonl]" \
      --output-dir "$OUT_DIR/a" --time-budget-min "$BUDGET_A" --set "eval_data=[$D/a/heldout.jsonl]" \
      "${common[@]}" "$@"
fi
if [ ! -f "$OUT_DIR/b/export/config.json" ]; then
  $PY -m qwenvl train sft --config configs/embedded.yaml --model "$OUT_DIR/a/export" --data "[$mix]" \
      --output-dir "$OUT_DIR/b" --time-budget-min "$BUDGET_B" --lr 6e-4 --set vision_lr=6e-6 --set merger_lr=6e-6 \
      --set "eval_data=[$D/heldout-c0.jsonl,$D/heldout-c1.jsonl]" "${common[@]}" "$@"
fi
last=b
stage() {  # NAME FROM DATA BUDGET LR WARMUP SEED
  local name=$1 from=$2 data=$3 budget=$4 lr=$5 warm=$6 seed=$7; shift 7
  [[ "${STAGES:-ab}" == *$name* ]] || return 0
  last=$name
  [ -f "$OUT_DIR/$name/export/config.json" ] && return 0
  $PY -m qwenvl train sft --config configs/embedded.yaml --model "$OUT_DIR/$from/export" --data "[$data]" \
      --output-dir "$OUT_DIR/$name" --time-budget-min "$budget" --lr "$lr" --warmup-steps "$warm" \
      --set vision_lr="$($PY -c "print($lr / 100)")" --set merger_lr="$($PY -c "print($lr / 100)")" --set seed="$seed" \
      --set "eval_data=[$D/heldout-c0.jsonl,$D/heldout-c1.jsonl]" "${common[@]}" "$@"
}
stage c b "$mix" "${BUDGET_C:-30}" 4e-4 10 1 "$@"
stage d c "$D/a/train.jsonl,$mix" "${BUDGET_D:-80}" 4e-4 30 2 "$@"
echo "weights: $OUT_DIR/$last/export"
