#!/usr/bin/env bash
# Issue 13: value models trained on what the reward has not yet shown (`train --residual`),
# guided at the beta calibrated for Best-of-16's KL bound (docs/training/residual/PLAN.md,
# written before any ran). The samples are the RL baselines' (runs/rl/samples, made by
# `bash benchmarks/rl_baselines.sh sample`); each model trains on a copy. Every step is
# resumable and skipped when done; run with nothing else beside it.
#
#   bash benchmarks/residual.sh train vader|plain   # runs/residual/<reward>
#   bash benchmarks/residual.sh revalidate          # held-out figures on the run's own halves
#   bash benchmarks/residual.sh eval vader|plain    # calibrate, then the guided rows
#   WORDS=1 bash benchmarks/residual.sh ...         # the same with --residual-words
#                                                   # (runs/residual/words; rows posResW, plainResW)
set -euo pipefail
ROOT=${RESIDUAL_DIR:-runs/residual}${WORDS:+/words}
EXTRA="--residual${WORDS:+ --residual-words}"
W=${WORDS:+W}
SAMPLES=${SAMPLES_DIR:-runs/rl/samples}
export PYTHONPATH=benchmarks  # the py:unseen_rewards specs of the vader directories
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
UNSEEN=(--samples 2 --seed 0 --reward py:unseen_rewards:asks --reward py:unseen_rewards:diversity
        --reward vader --best-of none --max-tokens 64 --embedded llama-server --resume --quiet)
PLAIN=(--prompts data/prompts/everyday_heldout.jsonl --limit 64 --samples 2 --seed 0
       --reward vader --reward plain --bon-reward plain --best-of none --max-tokens 64
       --embedded llama-server --out docs/results/frontier_plain --resume --quiet)
beta_for() {  # REWARD -> the beta calibrate picks for 1.84 nats, one decimal ("none" if none)
  local reward=$1 cal="$ROOT/calibration_$1.json"
  if [ ! -f "$cal" ]; then
    stamp "calibrate $reward" >&2
    vas-proxy calibrate --prompts data/prompts/everyday_heldout.jsonl --limit 32 --samples 4 \
      --seed 1 --max-tokens 64 --kl 1.84 --embedded llama-server --out "$ROOT/cal" --quiet \
      --value "res=$ROOT/$reward" >&2
    cp "$ROOT/cal/calibration.json" "$cal"
  fi
  python -c "import json; b = json.load(open('$cal'))['budget']['beta']; print('none' if b is None else round(b, 1))"
}
case "${1:?train, revalidate or eval}" in
  train)  # retrain64's recipe and data handling, plus --residual
    RECIPE_EXTRA="$EXTRA" RETRAIN_DIR="$ROOT" SAMPLES_DIR="$SAMPLES" \
      bash benchmarks/retrain64.sh train "${2:?vader or plain}" ;;
  revalidate)
    stamp revalidate
    python benchmarks/revalidate.py "$ROOT"/vader "$ROOT"/plain \
      --value bundled:positivity@"$ROOT/vader" --value bundled:plain@"$ROOT/plain" \
      --json "docs/training/residual/revalidate${W:+_words}.json" ;;
  eval)
    REWARD=${2:?vader or plain}
    B=$(beta_for "$REWARD")
    if [ "$B" = none ]; then stamp "no beta for $REWARD: no row"; exit 0; fi
    if [ "$REWARD" = vader ]; then
      stamp "eval residual vader beta $B (asks_eval, then replication)"
      vas-proxy eval --prompts data/prompts/everyday_heldout.jsonl --limit 32 "${UNSEEN[@]}" \
        --bon-reward py:unseen_rewards:asks --out docs/training/unseen/asks_eval \
        --value "posRes$W=$ROOT/vader" --beta "$B"
      vas-proxy eval --prompts docs/training/consistency/heldout_33_64.jsonl "${UNSEEN[@]}" \
        --out docs/training/consistency/replication --value "posRes$W=$ROOT/vader" --beta "$B"
    else
      stamp "eval residual plain beta $B (frontier_plain)"
      vas-proxy eval "${PLAIN[@]}" --value "plainRes$W=$ROOT/plain" --beta "$B"
    fi ;;
esac
stamp done
