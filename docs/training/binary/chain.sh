#!/usr/bin/env bash
# docs/training/binary/PLAN.md: calibrate --check for asksL and asksS, then their rows. Resumable.
set -euo pipefail
cd /work/main
source .venv/bin/activate
export PYTHONPATH=benchmarks OMP_NUM_THREADS=2
LOG=runs/binary/chain.log
M=runs/ablation/py_unseen_rewards_asks/recipe
log() { echo "== $(date -u +%H:%M:%S) $*" >> "$LOG"; }
while pgrep -f "py_unseen_rewards_asks/recipe" > /dev/null; do sleep 10; done
test -f "$M/vas_value.json" || { log "no model at $M"; exit 1; }
beta_for() {  # TAG then the value flags -> the check's beta for 1.84 nats, two decimals
  local tag=$1; shift
  if [ ! -f "runs/binary/calibration_$tag.json" ]; then
    log "calibrate --check $tag: $*"
    /usr/bin/time -f "%e s wall" vas-proxy calibrate --prompts data/prompts/everyday_heldout.jsonl \
      --limit 32 --samples 4 --seed 1 --max-tokens 64 --kl 1.84 --check 32 --rounds 2 \
      --embedded llama-server "$@" --out runs/binary/cal --quiet >> "$LOG" 2>&1
    cp runs/binary/cal/calibration.json "runs/binary/calibration_$tag.json"
  fi
  python -c "import json; b = json.load(open('runs/binary/calibration_$tag.json'))['check']['beta']; print('none' if b is None else round(b, 2))"
}
VR=(--reward py:unseen_rewards:asks --reward py:unseen_rewards:diversity --reward vader
    --best-of none --max-tokens 64 --embedded llama-server --resume --quiet --samples 2 --seed 0)
for tag in asksL asksS; do
  spec=$M; [ $tag = asksS ] && spec=binary:$M
  b=$(beta_for $tag --value "$tag=$spec"); log "$tag beta $b"
  [ "$b" = none ] && continue
  log "$tag first 32"
  /usr/bin/time -f "%e s wall" vas-proxy eval --prompts data/prompts/everyday_heldout.jsonl --limit 32 "${VR[@]}" \
    --bon-reward py:unseen_rewards:asks --out docs/training/unseen/asks_eval --value "$tag=$spec" --beta "$b" >> "$LOG" 2>&1
  log "$tag prompts 33-64"
  /usr/bin/time -f "%e s wall" vas-proxy eval --prompts docs/training/consistency/heldout_33_64.jsonl "${VR[@]}" \
    --out docs/training/consistency/replication --value "$tag=$spec" --beta "$b" >> "$LOG" 2>&1
done
log "chain done"
