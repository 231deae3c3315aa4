#!/usr/bin/env bash
# The bundled `personal` value model's check (docs/training/personal/PLAN.md, fixed before it
# ran). Resumable (--resume).
set -euo pipefail
OUT=${OUT:-docs/training/personal/eval}
vas-proxy eval --prompts data/prompts/everyday_heldout.jsonl --limit 32 --samples 2 --seed 0 \
  --reward interests:gardener --reward vader --reward plain --bon-reward interests:gardener \
  --value personal=bundled:personal --beta 0,2,4 --best-of 4 --max-tokens 64 \
  --embedded llama-server --out "$OUT" --resume --quiet
