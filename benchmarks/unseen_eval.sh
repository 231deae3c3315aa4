#!/usr/bin/env bash
# Issue 13, deliverable 4: do the recipe's first-time value models for the held-back rewards
# guide? (docs/training/unseen/PLAN.md, fixed before each ran.) Resumable.
#
#   bash benchmarks/unseen_eval.sh [asks|diversity]      # default: asks
set -euo pipefail
REWARD=${1:-asks}
OUT=${OUT:-docs/training/unseen/${REWARD}_eval}
export PYTHONPATH="benchmarks${PYTHONPATH:+:$PYTHONPATH}"
vas-proxy eval --prompts data/prompts/everyday_heldout.jsonl --limit 32 --samples 2 --seed 0 \
  --reward py:unseen_rewards:asks --reward py:unseen_rewards:diversity --reward vader \
  --bon-reward "py:unseen_rewards:$REWARD" \
  --value "$REWARD=runs/ablation/py_unseen_rewards_$REWARD/recipe" --beta 0,4 --best-of 4,16 \
  --max-tokens 64 --embedded llama-server --out "$OUT" --resume --quiet
