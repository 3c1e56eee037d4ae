#!/usr/bin/env bash
# The report's claims in miniature (issue 7, item 6; docs/embedded-model.md, "The report's claims"):
#   time    absolute-time vs frame-index MRoPE: video grounding only, trained at 1 and 2 fps, scored at 0.5/1/2/4 fps
#   window  window vs full attention in the vision tower: refer + point on pictures up to 336 px, scored at
#           112/224/336/448 px (the cost side: bench/vision_window.py)
# Each claim trains two arms from the same checkpoint (INIT, default stage A of scripts/train_embedded.sh: it has
# never seen a video, and at its 112-px pictures a window is the whole picture, so it favours neither arm) that
# differ only in the setting under test, side by side with one thread each, then writes the table.
#
#   bash scripts/claims.sh [time|window|all] [OUT_DIR]      # 2 CPU cores: ~2 min data + ~70 / ~70 min of training
# Settings (environment): INIT, BUDGET_TIME (minutes, 45), STEPS_WINDOW (800), STEPS_WINDOW2 (500), THREADS (1 per arm), GEN_WORKERS,
# PYTHON. An arm whose export exists is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
WHICH=${1:-all}
OUT=${2:-runs/claims}
PY=${PYTHON:-.venv/bin/python}
INIT=${INIT:-runs/embedded/a/export}
GEN_WORKERS=${GEN_WORKERS:-$(nproc)}
THREADS=${THREADS:-1}
export TOKENIZERS_PARALLELISM=false
if [ ! -f "$INIT/config.json" ]; then
  echo "error: no checkpoint at INIT=$INIT; run stage A first (STAGES=a bash scripts/train_embedded.sh) or set INIT" >&2
  exit 2
fi

build() { [ -f "$1/$3.jsonl" ] || $PY -m qwenvl.synth.build --out "$1" --workers "$GEN_WORKERS" "${@:4}" --name "$3" --split "$2"; }

train_arms() {  # DIR SUFFIX DATA EVAL [extra trainer args]; each arm starts from DIR/init-<arm> (SUFFIX "") or
                # from DIR/<arm>/export (SUFFIX "-2": a continuation) and writes DIR/<arm><SUFFIX>
  local dir=$1 suffix=$2 data=$3 eval=$4; shift 4
  local pids=()
  for init in "$dir"/init-*; do
    local arm=${init##*/init-}
    local from=$init
    [ -n "$suffix" ] && from=$dir/$arm/export
    [ -f "$dir/$arm$suffix/export/config.json" ] && continue
    OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS $PY -m qwenvl train sft --config configs/embedded.yaml \
        --model "$from" --data "[$data]" --output-dir "$dir/$arm$suffix" --set "eval_data=[$eval]" --eval-every 300 --set eval_max_samples=40 --set eval_media_gap=true \
        --pack-length 2048 --num-workers 0 "$@" > "$dir/$arm$suffix.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
}

if [ "$WHICH" = time ] || [ "$WHICH" = all ]; then
  D=$OUT/time
  build "$D/train" train train --tasks video --n 12000 --seed 21 --curriculum 0 --fps-choices 1 2
  for f in 0.5 1 2 4; do
    build "$D" heldout "heldout-fps$f" --tasks video --n 40 --seed 2001 --curriculum 0 --fps-choices $f
  done
  [ -d "$D/init-absolute" ] || cp -r "$INIT" "$D/init-absolute"
  [ -d "$D/init-frame" ] || $PY -m qwenvl.synth.claims variant "$INIT" "$D/init-frame" --time-positions frame_index
  train_arms "$D" "" "$D/train/train.jsonl" "$D/heldout-fps1.jsonl,$D/heldout-fps2.jsonl" \
      --time-budget-min "${BUDGET_TIME:-45}" --lr 6e-4  # same cost per step: equal time = equal steps
  # then 600 more steps each (new warm-up and cosine from 3e-4, shuffle seed 1)
  train_arms "$D" -2 "$D/train/train.jsonl" "$D/heldout-fps1.jsonl,$D/heldout-fps2.jsonl" --time-budget-min 0 \
      --set max_steps=600 --lr 3e-4 --set warmup_steps=10 --set vision_lr=3e-6 --set merger_lr=3e-6 --set seed=1
  $PY -m qwenvl.synth.claims table --title "Absolute-time vs frame-index MRoPE (video grounding)" \
      --row-name "sampling fps" --arm "absolute, 1k steps=$D/absolute/export" \
      --arm "frame index, 1k steps=$D/frame/export" --arm "absolute, 1.6k steps=$D/absolute-2/export" \
      --arm "frame index, 1.6k steps=$D/frame-2/export" --prior "$D/train/train.jsonl" \
      --data "0.5=$D/heldout-fps0.5.jsonl" --data "1=$D/heldout-fps1.jsonl" --data "2=$D/heldout-fps2.jsonl" \
      --data "4=$D/heldout-fps4.jsonl" --seen 1 2 --metric temporal_miou --metric temporal_r50 \
      --out docs/embedded-runs/claim-time.md --json docs/embedded-runs/claim-time.json
fi

if [ "$WHICH" = window ] || [ "$WHICH" = all ]; then
  D=$OUT/window
  build "$D/train" train train --tasks refer,point --n 5000 --seed 31 --curriculum 0 --max-side 336
  for s in 112 224 336 448; do
    build "$D" heldout "heldout-$s" --tasks refer,point --n 40 --seed 3001 --curriculum 0 --image-size $s $s
  done
  [ -d "$D/init-window" ] || cp -r "$INIT" "$D/init-window"
  [ -d "$D/init-full" ] || $PY -m qwenvl.synth.claims variant "$INIT" "$D/init-full" --full-attention
  # full attention costs more per step, so both arms get the same number of steps (not the same time)
  train_arms "$D" "" "$D/train/train.jsonl" "$D/heldout-224.jsonl" --time-budget-min 0 \
      --set "max_steps=${STEPS_WINDOW:-800}" --lr 6e-4
  # then 500 more steps each (new warm-up and cosine from 3e-4, shuffle seed 1)
  train_arms "$D" -2 "$D/train/train.jsonl" "$D/heldout-224.jsonl" --time-budget-min 0 \
      --set "max_steps=${STEPS_WINDOW2:-500}" --lr 3e-4 --set warmup_steps=10 --set vision_lr=3e-6 \
      --set merger_lr=3e-6 --set seed=1
  $PY -m qwenvl.synth.claims table --title "Window vs full attention in the vision tower (accuracy)" \
      --row-name "picture" --arm "window, 800 steps=$D/window/export" --arm "full, 800 steps=$D/full/export" \
      --arm "window, 1.3k steps=$D/window-2/export" --arm "full, 1.3k steps=$D/full-2/export" \
      --data "112 px=$D/heldout-112.jsonl" --data "224 px=$D/heldout-224.jsonl" \
      --data "336 px=$D/heldout-336.jsonl" --data "448 px=$D/heldout-448.jsonl" --seen "112 px" "224 px" "336 px" \
      --prior "$D/train/train.jsonl" --metric grounding_miou --metric point_acc \
      --out docs/embedded-runs/claim-window.md --json docs/embedded-runs/claim-window.json
fi
