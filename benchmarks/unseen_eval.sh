#!/usr/bin/env bash
# Issue 13, deliverable 4: does the recipe's first-time value model for the held-back sparse
# reward `asks` guide? (docs/training/unseen/PLAN.md, fixed before it ran.) Resumable.
set -euo pipefail
OUT=${OUT:-docs/training/unseen/asks_eval}
export PYTHONPATH="benchmarks${PYTHONPATH:+:$PYTHONPATH}"
vas-proxy eval --prompts data/prompts/everyday_heldout.jsonl --limit 32 --samples 2 --seed 0 \
  --reward py:unseen_rewards:asks --reward py:unseen_rewards:diversity --reward vader \
  --bon-reward py:unseen_rewards:asks \
  --value asks=runs/ablation/py_unseen_rewards_asks/recipe --beta 0,4 --best-of 4,16 \
  --max-tokens 64 --embedded llama-server --out "$OUT" --resume --quiet
