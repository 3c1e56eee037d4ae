#!/usr/bin/env bash
# The click-reading chain of the embedded model (docs/embedded-runs/notes.md, twenty-fifth session): teach the vision
# tower to put each GUI label's name into the tokens under its ink, then the language model to click by that name.
#   data  GUI screenshots with label boxes (c0 seed 7201, c1 seed 7203; held out: 60, seed 7202), 16,000
#         short-prompt clicks (qwenvl.synth.build --gui-prompt short: c0 seed 7301, c1 seed 7302), and 2,500 grounding
#         scenes of data/s224 (shuffled with seed 0) so the colour and shape heads keep those in the tokens
#   N1    `python -m qwenvl.train.tower_aux --element-names --element-cells label` from the shipped model (Z): the
#         vision tower alone learns the label's name in the cells of its ink; the anchor holds the grounding
#         scenes' tokens to Z's (--anchor-scenes grounding), the GUI tokens may move
#   N2    N1 again, new heads and schedule, 15 min at 3e-4 (BUDGET_N2=0 skips it)
#   W1    N2 again with the name head read along the language model's own input embeddings of the names, frozen
#         (--element-head words), BUDGET_W1 min at 3e-4 (off by default; 12 in the twenty-eighth session); W2
#         continues it for BUDGET_W2 (25) min; R1 on W2 named no better than on N2
#   K1    the last tower's language model, towers frozen, on Z's data (W/X's mix + data/v2, v3) + the short-prompt
#         clicks
#   R1    the last tower's language model, towers frozen, on the GUI naming rungs (--tasks gui_rungs: which element
#         is at (x, y), is there an X, list the buttons; c0 seed 7401, c1 seed 7402, held out 40 per task seed 7403)
#         + the clicks
#   L1    the ladder (twenty-ninth session; off unless BUDGET_L1 is set): the last tower's language model, towers
#         frozen, on gui_name_one (a window with one element: "What is the element in this window?"), the three
#         rungs and gui_copy (text only: name the element that comes third in a listed window), BUDGET_L1 min
#   L2    L1 continued with gui_name_kind beside them (one element of the asked kind among others: "Which button
#         does this window have?"), BUDGET_L2 (25) min
#   LB    L2 on gui_name_one's buttons beside g1 and g2, BUDGET_LB (15) min: L2 copies every kind's name but
#         the buttons' (the twenty-ninth session ran L3 from L2, before LB existed)
#   L3    L2 on Z's whole mix + the clicks + the ladder, BUDGET_L3 (35) min (on W2: the rungs hold, the clicks do not
#         rise; embedded-runs/notes.md, twenty-ninth session)
#   K2    R1 on Z's whole mix + the clicks + the rungs, so grounding comes back beside the clicks
#         (twenty-seventh session: on N2, R1 and 55 more minutes of it learn each element's kind but not its name;
#         W1/W2 came next: embedded-runs/notes.md, twenty-eighth session)
#
#   bash scripts/click_names.sh runs/click        # 2 CPU cores (AVX512-BF16): ~3 min of data, then N1, N2, K1, R1, K2
#                                                 # (about 2.5 h; BUDGET_K1=0 skips K1; BUDGET_W1=12 adds W1, W2)
#   BUDGET_W1=12 BUDGET_L1=20 BUDGET_K1=0 BUDGET_R1=0 bash scripts/click_names.sh runs/click   # the ladder on W2
#
# Needs runs/embedded/data (DATA_ONLY=1 STAGES=emo bash scripts/train_embedded.sh runs/embedded).
# Settings (environment): MODEL (qwenvl/embedded), DATA (runs/embedded/data), BUDGET_N1 (30 min), ANCHOR_N1 (4,
# both rounds), LR_N1 (5e-4), BUDGET_N2 (15), LR_N2 (3e-4), BUDGET_K1 (40 min), LR_K1 (2e-4), BUDGET_R1 (20),
# BUDGET_W1 (0), BUDGET_W2 (25), LR_W (3e-4), LR_R1 (2e-4), BUDGET_L1 (0), BUDGET_L2 (25), BUDGET_LB (15),
# BUDGET_L3 (35), BUDGET_K2 (40), LR_K2 (2e-4), GEN_WORKERS, PYTHON (a budget of 0 skips that stage).
# DATA_ONLY=1 stops after the data, TOWERS_ONLY=1 after the towers. A stage whose export exists is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/click}
PY=${PYTHON:-.venv/bin/python}
MODEL=${MODEL:-qwenvl/embedded}
D=${DATA:-runs/embedded/data}
GEN_WORKERS=${GEN_WORKERS:-$(nproc)}
export TOKENIZERS_PARALLELISM=false
[ -f "$D/s224/train.jsonl" ] && [ -f "$D/v3/train.jsonl" ] || {
  echo "error: $D lacks the stage data; run DATA_ONLY=1 STAGES=emo bash scripts/train_embedded.sh first" >&2; exit 2; }

gui() {  # OUT SPLIT CURRICULUM N SEED NAME [more build args]
  local out=$1 split=$2 lvl=$3 n=$4 seed=$5 name=$6; shift 6
  [ -f "$out/$name.jsonl" ] || $PY -m qwenvl.synth.build --out "$out" --split "$split" --curriculum "$lvl" \
      --tasks computer_use --n "$n" --seed "$seed" --name "$name" --workers "$GEN_WORKERS" "$@"
}
gui "$OUT/gu" train 0 2000 7201 c0
gui "$OUT/gu" train 1 2000 7203 c1
gui "$OUT/gu" heldout 1 60 7202 heldout
gui "$OUT/gs" train 0 8000 7301 c0 --gui-prompt short
gui "$OUT/gs" train 1 8000 7302 c1 --gui-prompt short
rungs() {  # DIR TASKS N SEED: c0 (SEED), c1 (SEED + 1), 40 held out (SEED + 2)
  gui "$1" train 0 "$3" "$4" c0 --tasks "$2"
  gui "$1" train 1 "$3" $(($4 + 1)) c1 --tasks "$2"
  gui "$1" heldout 1 40 $(($4 + 2)) heldout --tasks "$2"
}
rungs "$OUT/gr" gui_rungs 2000 7401
rungs "$OUT/g1" gui_name_one 1500 7501
rungs "$OUT/g2" gui_name_kind 1500 7511
gui "$OUT/g3" train 0 4000 7521 train --tasks gui_copy
gui "$OUT/g3" heldout 0 40 7523 heldout --tasks gui_copy
gui "$OUT/g5" train 1 8000 7541 all --tasks gui_name_one
[ -f "$OUT/g5/buttons.jsonl" ] || $PY -c "import json, sys
keep = [l for l in open(sys.argv[1]) if json.loads(l)['meta']['answer_kind'] == 'button']
open(sys.argv[2], 'w').write(''.join(keep))" "$OUT/g5/all.jsonl" "$OUT/g5/buttons.jsonl"
[ -f "$OUT/s224-sub.jsonl" ] || $PY -c "import random, sys
lines = open(sys.argv[1]).read().splitlines()
random.Random(0).shuffle(lines)
open(sys.argv[2], 'w').write('\n'.join(lines[:2500]) + '\n')" "$D/s224/train.jsonl" "$OUT/s224-sub.jsonl"
# s224-sub's image paths are relative to data/s224: keep a link beside it
[ -e "$OUT/media" ] || ln -s "$(realpath "$D/s224/media")" "$OUT/media"
[ -f "$OUT/gh/heldout.jsonl" ] || $PY -m qwenvl.synth.build --out "$OUT/gh" --split heldout --n 40 --seed 7001 \
    --curriculum 1 --tasks refer,count --workers "$GEN_WORKERS"
[ "${DATA_ONLY:-0}" = 1 ] && exit 0

tower_round() {  # NAME FROM MINUTES LR HEAD_STEPS SEED [more tower_aux args]: the label-name head, grounding held
  local name=$1 from=$2 minutes=$3 lr=$4 head=$5 seed=$6; shift 6
  [ -f "$OUT/$name/export/config.json" ] && return 0
  $PY -m qwenvl.train.tower_aux -m "$from" --data "$OUT/gu/c0.jsonl" --data "$OUT/gu/c1.jsonl" \
      --data "$D/u0/train.jsonl" --data "$D/u1/train.jsonl" --data "$OUT/s224-sub.jsonl" \
      --element-names --element-cells label --heldout "$OUT/gu/heldout.jsonl" --heldout "$OUT/gh/heldout.jsonl" \
      --n-heldout 60 --out "$OUT/$name/export" --time-budget-min "$minutes" --lr "$lr" \
      --anchor "${ANCHOR_N1:-4}" --anchor-scenes grounding --head-steps "$head" --eval-every 150 --seed "$seed" "$@"
}
tower_round n1 "$MODEL" "${BUDGET_N1:-30}" "${LR_N1:-5e-4}" 300 31
# N2: a second round from N1 (new heads, a new schedule), 15 min at 3e-4
[ "${BUDGET_N2:-15}" != 0 ] && tower_round n2 "$OUT/n1/export" "${BUDGET_N2:-15}" "${LR_N2:-3e-4}" 200 33
TOWER=$OUT/n2/export
[ "${BUDGET_N2:-15}" = 0 ] && TOWER=$OUT/n1/export
# W1, W2 (off unless BUDGET_W1 is set; 12 + 25 min in the twenty-eighth session): the names read along the
# language model's own input embeddings (--element-head words)
if [ "${BUDGET_W1:-0}" != 0 ]; then
  tower_round w1 "$TOWER" "$BUDGET_W1" "${LR_W:-3e-4}" 100 41 --element-head words
  TOWER=$OUT/w1/export
  if [ "${BUDGET_W2:-25}" != 0 ]; then
    tower_round w2 "$TOWER" "${BUDGET_W2:-25}" "${LR_W:-3e-4}" 100 42 --element-head words --eval-every 300
    TOWER=$OUT/w2/export
  fi
fi
[ "${TOWERS_ONLY:-0}" = 1 ] && { echo "tower: $TOWER"; exit 0; }
TX=$D/rt0/train.jsonl,$D/st0/train.jsonl,$D/rt1/train.jsonl,$D/v0/train.jsonl,$D/v1/train.jsonl,$D/u0/train.jsonl
TX=$TX,$D/u1/train.jsonl,$D/d01/train.jsonl,$D/g0/train.jsonl,$D/g1/train.jsonl,$D/o0/train.jsonl,$D/o1/train.jsonl
TX=$TX,$D/t0/train.jsonl,$D/t1/train.jsonl,$D/s224/train.jsonl,$D/v2/train.jsonl,$D/v3/train.jsonl
lm_round() {  # NAME FROM DATA MINUTES LR SEED EVAL: the language model on DATA (comma-separated), towers frozen
  local name=$1 from=$2 data=$3 minutes=$4 lr=$5 seed=$6 eval=$7
  [ -f "$OUT/$name/export/config.json" ] && return 0
  $PY -m qwenvl train sft --config configs/embedded.yaml --model "$from" --data "[$data]" --output-dir "$OUT/$name" \
      --time-budget-min "$minutes" --lr "$lr" --warmup-steps 20 \
      --set tune_vision=false --set tune_merger=false --set seed="$seed" --set "eval_data=[$eval]" \
      --pack-length 2048 --eval-every 500 --set eval_max_samples=60 --set eval_media_gap=true
}
CLICKS=$OUT/gs/c0.jsonl,$OUT/gs/c1.jsonl
RUNGS=$OUT/gr/c0.jsonl,$OUT/gr/c1.jsonl
if [ "${BUDGET_K1:-40}" != 0 ]; then
  lm_round k1 "$TOWER" "$TX,$CLICKS" "${BUDGET_K1:-40}" "${LR_K1:-2e-4}" 32 "$D/heldout-c1.jsonl"
  echo "weights: $OUT/k1/export"
fi
# L1, L2 (off unless BUDGET_L1 is set): the ladder, from a window with one element to one of a kind among others
if [ "${BUDGET_L1:-0}" != 0 ]; then
  ONE=$OUT/g1/c0.jsonl,$OUT/g1/c1.jsonl
  lm_round l1 "$TOWER" "$ONE,$RUNGS,$OUT/g3/train.jsonl" "$BUDGET_L1" "${LR_R1:-2e-4}" 61 "$OUT/g1/heldout.jsonl"
  LM=$OUT/l1/export
  if [ "${BUDGET_L2:-25}" != 0 ]; then
    lm_round l2 "$LM" "$ONE,$OUT/g2/c0.jsonl,$OUT/g2/c1.jsonl,$RUNGS,$OUT/g3/train.jsonl" "${BUDGET_L2:-25}" \
        "${LR_R1:-2e-4}" 62 "$OUT/g2/heldout.jsonl"
    LM=$OUT/l2/export
  fi
  # LB: the buttons' names, which L2 does not copy: gui_name_one's buttons (~2,000) beside g1 and g2 (BUDGET_LB, 15)
  if [ "${BUDGET_LB:-15}" != 0 ]; then
    lm_round lb "$LM" "$OUT/g5/buttons.jsonl,$ONE,$OUT/g2/c0.jsonl,$OUT/g2/c1.jsonl" "${BUDGET_LB:-15}" \
        "${LR_R1:-2e-4}" 65 "$OUT/g1/heldout.jsonl"
    LM=$OUT/lb/export
  fi
  # L3: Z's whole mix, the short-prompt clicks and the ladder beside them, so grounding comes back (BUDGET_L3, 35)
  if [ "${BUDGET_L3:-35}" != 0 ]; then
    lm_round l3 "$LM" "$TX,$CLICKS,$ONE,$OUT/g2/c0.jsonl,$OUT/g2/c1.jsonl,$RUNGS,$OUT/g3/train.jsonl" \
        "${BUDGET_L3:-35}" "${LR_K2:-2e-4}" 63 "$D/heldout-c1.jsonl"
    LM=$OUT/l3/export
  fi
  echo "weights: $LM"
fi
[ "${BUDGET_R1:-20}" = 0 ] && exit 0
# R1: the naming rungs (gui_name_at, gui_exists, gui_list) beside the short-prompt clicks, on N2's frozen towers
lm_round r1 "$TOWER" "$RUNGS,$CLICKS" "${BUDGET_R1:-20}" "${LR_R1:-2e-4}" 34 "$OUT/gr/heldout.jsonl"
# K2: R1 on Z's whole mix with the clicks and the rungs beside it, so grounding comes back
if [ "${BUDGET_K2:-40}" != 0 ]; then
  lm_round k2 "$OUT/r1/export" "$TX,$CLICKS,$RUNGS" "${BUDGET_K2:-40}" "${LR_K2:-2e-4}" 35 "$D/heldout-c1.jsonl"
fi
echo "weights: $OUT/r1/export $OUT/k2/export"
