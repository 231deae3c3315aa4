#!/usr/bin/env bash
# Issue 13: a variant of retrain64's recipe, trained on its sample and guided at the beta
# `vas-proxy calibrate` picks for Best-of-16's KL bound (1.84 nats). Each variant's plan, fixed
# before it ran: docs/training/residual/PLAN.md (residual, residual-words),
# docs/training/capacity/PLAN.md (all-layers), docs/training/epochs64/PLAN.md (epochs6). The
# samples are the RL baselines' (runs/rl/samples, made by `bash benchmarks/rl_baselines.sh
# sample`); each model trains on a copy. Every step is resumable and skipped when done; run
# with nothing else beside it.
#
#   VARIANT=V bash benchmarks/variant64.sh train vader|plain   # $ROOT/<reward>
#   VARIANT=V bash benchmarks/variant64.sh revalidate          # held-out figures, the run's halves
#   VARIANT=V bash benchmarks/variant64.sh eval vader|plain    # calibrate, then the guided row
#
# Variants (flags added to the recipe; row names; where vader's row goes):
#   residual        --residual                    posRes / plainRes   asks_eval + replication
#   residual-words  --residual --residual-words   posResW / plainResW asks_eval + replication
#   all-layers      --lora-layers 0 (all 30)      posAll / plainAll   frontier_plain
#   epochs6         --epochs 6 (the new default)  pos6 / plain6       asks_eval + replication
set -euo pipefail
case "${VARIANT:?residual, residual-words, all-layers or epochs6}" in
  residual)       EXTRA="--residual"; TAG=Res; ROOT=runs/residual; DOCS=residual; JSON=revalidate ;;
  residual-words) EXTRA="--residual --residual-words"; TAG=ResW; ROOT=runs/residual/words
                  DOCS=residual; JSON=revalidate_words ;;
  all-layers)     EXTRA="--lora-layers 0"; TAG=All; ROOT=runs/capacity; DOCS=capacity
                  JSON=revalidate ;;
  epochs6)        EXTRA="--epochs 6"; TAG=6; ROOT=runs/epochs64; DOCS=epochs64; JSON=revalidate ;;
  *) echo "unknown VARIANT $VARIANT" >&2; exit 2 ;;
esac
ROOT=${VARIANT_DIR:-$ROOT}
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
      --value "v=$ROOT/$reward" >&2
    cp "$ROOT/cal/calibration.json" "$cal"
  fi
  python -c "import json; b = json.load(open('$cal'))['budget']['beta']; print('none' if b is None else round(b, 1))"
}
case "${1:?train, revalidate or eval}" in
  train)  # retrain64's recipe and data handling, plus the variant's flags
    RECIPE_EXTRA="$EXTRA" RETRAIN_DIR="$ROOT" SAMPLES_DIR="$SAMPLES" \
      bash benchmarks/retrain64.sh train "${2:?vader or plain}" ;;
  revalidate)
    stamp revalidate
    python benchmarks/revalidate.py "$ROOT"/vader "$ROOT"/plain \
      --value bundled:positivity@"$ROOT/vader" --value bundled:plain@"$ROOT/plain" \
      --json "docs/training/$DOCS/$JSON.json" ;;
  eval)
    REWARD=${2:?vader or plain}
    B=$(beta_for "$REWARD")
    if [ "$B" = none ]; then stamp "no beta for $REWARD: no row"; exit 0; fi
    if [ "$REWARD" = plain ]; then
      stamp "eval plain$TAG beta $B (frontier_plain)"
      vas-proxy eval "${PLAIN[@]}" --value "plain$TAG=$ROOT/plain" --beta "$B"
    elif [ "$TAG" = All ]; then
      stamp "eval pos$TAG beta $B (frontier_plain, beside positivity64)"
      vas-proxy eval "${PLAIN[@]}" --value "pos$TAG=$ROOT/vader" --beta "$B"
    else
      stamp "eval pos$TAG beta $B (asks_eval, then replication)"
      vas-proxy eval --prompts data/prompts/everyday_heldout.jsonl --limit 32 "${UNSEEN[@]}" \
        --bon-reward py:unseen_rewards:asks --out docs/training/unseen/asks_eval \
        --value "pos$TAG=$ROOT/vader" --beta "$B"
      vas-proxy eval --prompts docs/training/consistency/heldout_33_64.jsonl "${UNSEEN[@]}" \
        --out docs/training/consistency/replication --value "pos$TAG=$ROOT/vader" --beta "$B"
    fi ;;
esac
stamp done
