#!/usr/bin/env bash
# The click finder stages of the embedded model (docs/embedded-runs/notes.md, thirtieth session): a dense signal that
# teaches the language model to mark the element a click instruction names (python -m qwenvl.train.click_aux).
#   F1  from L3 (scripts/click_names.sh, stage L3), towers frozen: a free linear finder on decoder layer 2's visual
#       tokens, the short- and long-prompt clicks, BUDGET_F1 (25) min
#   F3  from L3 again: the finder first fitted on refer / point scenes (data/s224) for 200 steps and then frozen, so
#       the clicks are marked in the direction the pointing answers read; clicks + s224, BUDGET_F3 (28) min
#   F4  F3 with the look loss: decoder layer 3 heads 1, 3, 4 and layer 4 heads 0, 2, 3, 4 (the heads whose image
#       attention lands on a referred object when the model points) taught to look at the named element from the
#       positions that predict the click's digits, BUDGET_F4 (24) min
#   F5  F4 with Z's whole mix (the TX files of scripts/click_names.sh) beside the clicks, the frozen finder and the
#       look loss, so the other tasks come back, BUDGET_F5 (30) min
#   G8  F5 on the same data with the look loss on the clicks only (--look-task computer_use: the pointing heads
#       stay free for refer / point), lr 1e-4, BUDGET_G8 (40) min
#   G9  G8 with more refer / point (data/s224 and data/g1 twice), lr 7e-5, BUDGET_G9 (35) min
#   G10 G9 with s224, g0 and g1 three times, lr 5e-5, BUDGET_G10 (15) min: the next model to ship
#
#   bash scripts/click_finder.sh runs/click          # needs runs/click/k3/export (L3) and the click data of
#                                                    # scripts/click_names.sh; 2 CPU cores: about 210 minutes
# Settings (environment): FROM (runs/click/k3/export), DATA (runs/embedded/data), BUDGET_F1, BUDGET_F3, BUDGET_F4,
# BUDGET_F5, BUDGET_G8, BUDGET_G9, BUDGET_G10 (a budget of 0 skips that stage), PYTHON. A stage whose model directory exists is
# skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/click}
PY=${PYTHON:-.venv/bin/python}
FROM=${FROM:-$OUT/k3/export}
D=${DATA:-runs/embedded/data}
export TOKENIZERS_PARALLELISM=false
[ -f "$FROM/config.json" ] || {
  echo "error: $FROM is not a model directory; run scripts/click_names.sh (stage L3) first" >&2; exit 2; }
[ -f "$OUT/gs/heldout.jsonl" ] || $PY -m qwenvl.synth.build --out "$OUT/gs" --split heldout --curriculum 1 \
    --tasks computer_use --n 60 --seed 7304 --name heldout --gui-prompt short --workers 1
[ -f "$D/pr-heldout.jsonl" ] || $PY -c "import json, sys
keep = [l for l in open(sys.argv[1]) if json.loads(l)['meta']['task'] in ('refer', 'point')]
open(sys.argv[2], 'w').write(''.join(keep[:60]))" "$D/heldout-c1.jsonl" "$D/pr-heldout.jsonl"
CLICKS=(--data "$OUT/gs/c0.jsonl" --data "$OUT/gs/c1.jsonl" --data "$OUT/gu/c0.jsonl" --data "$OUT/gu/c1.jsonl")
HELD=(--heldout "$OUT/gu/heldout.jsonl" --heldout "$OUT/gs/heldout.jsonl" --heldout "$D/pr-heldout.jsonl")
stage() {  # NAME BUDGET FROM [click_aux args]
  local name=$1 budget=$2 from=$3; shift 3
  [ "$budget" = 0 ] || [ -f "$OUT/$name/config.json" ] || \
    $PY -m qwenvl.train.click_aux -m "$from" "${CLICKS[@]}" "${HELD[@]}" --out "$OUT/$name" \
      --time-budget-min "$budget" "$@"
}
stage f1 "${BUDGET_F1:-25}" "$FROM" --head-steps 100 --eval-every 100
stage f3 "${BUDGET_F3:-28}" "$FROM" --head-data "$D/s224/train.jsonl" --freeze-head --data "$D/s224/train.jsonl" \
  --head-steps 200 --eval-every 200
stage f4 "${BUDGET_F4:-24}" "$OUT/f3" --head-data "$D/s224/train.jsonl" --freeze-head --data "$D/s224/train.jsonl" \
  --look 3:1,3,4 --look 4:0,2,3,4 --head-steps 100 --eval-every 200 --seed 2
TX=()
for f in rt0 st0 rt1 v0 v1 u0 u1 d01 g0 g1 o0 o1 t0 t1 s224 v2 v3; do TX+=(--data "$D/$f/train.jsonl"); done
stage f5 "${BUDGET_F5:-30}" "$OUT/f4" "${TX[@]}" --head-data "$D/s224/train.jsonl" --freeze-head \
  --look 3:1,3,4 --look 4:0,2,3,4 --head-steps 100 --eval-every 200 --seed 3
# G8, G9 list the data files as they ran: the mix first, then the clicks
mixed() {  # NAME BUDGET FROM [click_aux args]
  local name=$1 budget=$2 from=$3; shift 3
  [ "$budget" = 0 ] || [ -f "$OUT/$name/config.json" ] || \
    $PY -m qwenvl.train.click_aux -m "$from" "${TX[@]}" "${CLICKS[@]}" --head-data "$D/s224/train.jsonl" --freeze-head \
      --look 3:1,3,4 --look 4:0,2,3,4 --look-task computer_use "$@" "${HELD[@]}" --out "$OUT/$name" \
      --time-budget-min "$budget" --head-steps 100 --eval-every 200
}
mixed g8 "${BUDGET_G8:-40}" "$OUT/f5" --lr 1e-4 --seed 6
mixed g9 "${BUDGET_G9:-35}" "$OUT/g8" --lr 7e-5 --data "$D/s224/train.jsonl" --data "$D/g1/train.jsonl" --seed 7
S=(--data "$D/s224/train.jsonl" --data "$D/g0/train.jsonl" --data "$D/g1/train.jsonl")
mixed g10 "${BUDGET_G10:-15}" "$OUT/g9" --lr 5e-5 "${S[@]}" "${S[@]}" --seed 8
