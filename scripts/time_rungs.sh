# The time rungs of the video task (qwenvl.synth.probes): their data and their training run. Sourced by
# scripts/probes_time.sh and scripts/train_embedded.sh (stages E and M), which define PY.
rung_data() {  # OUT: `when` (4,000 clips, seed 13), `span` (3,000, 21), `span_named` (3,000, 22), with held-out sets
  local t task n seed
  for t in "when 4000 13" "span 3000 21" "span_named 3000 22"; do
    read -r task n seed <<<"$t"
    [ -f "$1/$task-train.jsonl" ] || $PY -m qwenvl.synth.probes build --out "$1" --task "$task" --n "$n" \
        --seed "$seed" >/dev/null
  done
}
rung_train() {  # FROM DATA OUT_DIR STEPS LR: the language model only (towers frozen), no held-out loss
  $PY -m qwenvl train sft --config configs/embedded.yaml --model "$1" --data "[$2]" --output-dir "$3" \
      --max-steps "$4" --lr "$5" --warmup-steps 20 --epochs 20 --pack-length 2048 --min-lr-ratio 0.1 \
      --time-budget-min 0 --tune-vision false --tune-merger false --save-every 0
}
