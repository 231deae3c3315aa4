#!/usr/bin/env bash
# Issue 13's recipe ablations (docs/training/ablation/PLAN.md, written before any ran).
# One sample of the base policy, reused by every variant: the first 40 prompts of
# data/prompts/everyday.jsonl, 16 samples each, 48 tokens, 8 prompts held out (their 128
# responses cut in half and completed 4 times: the validation targets). Each variant trains on
# a copy of those samples, so variants differ only in what they name. Resumable: a variant
# whose model exists is skipped; the sampling run resumes with --resume.
#
#   bash benchmarks/recipe_ablation.sh sample            # the shared samples
#   bash benchmarks/recipe_ablation.sh sample-topk       # the same with their top-6 stored
#   bash benchmarks/recipe_ablation.sh REWARD VARIANT    # one variant (see PLAN.md)
#
# A variant with --consistency or --branches (docs/training/consistency/PLAN.md) trains on the
# top-k sample (samples_topk: the same seeds); so does `recipe_topk`, the recipe on that sample.
set -euo pipefail
ROOT=${ABLATION_DIR:-runs/ablation}
BASE=(--samples-per-prompt 16 --max-tokens 48 --heldout-frac 0.2 --val-completions 4
      --seed 0 --no-logprobs --concurrency 4 --quiet)
# the README's recipe when the plan was fixed (epochs6 has since made 6 the default; these
# runs predate --min-steps, so it is off: each variant trains exactly its --epochs)
RECIPE=(--epochs 3 --min-steps 0 --lr 5e-4 --lora-r 16 --lora-layers 8 --batch-size 8)
mkdir -p "$ROOT"
[ -f "$ROOT/prompts.jsonl" ] || head -40 data/prompts/everyday.jsonl > "$ROOT/prompts.jsonl"
TOPK=(--consistency 1 --consistency-k 6)  # rollouts store their top-6
with_logprobs() { local a out=(); for a in "${BASE[@]}"; do [ "$a" = --no-logprobs ] || out+=("$a"); done; BASE=("${out[@]}"); }
if [ "$1" = sample ] || [ "$1" = sample-topk ]; then
  SAMPLES=$ROOT/samples FLAGS=("${BASE[@]}")
  if [ "$1" = sample-topk ]; then
    with_logprobs
    SAMPLES=$ROOT/samples_topk FLAGS=("${BASE[@]}" "${TOPK[@]}")
  fi
  echo "== $(date -u +%H:%M:%S) $1"
  exec vas-proxy train --prompts "$ROOT/prompts.jsonl" --reward vader --out "$SAMPLES" \
       "${FLAGS[@]}" "${RECIPE[@]}" --epochs 0 $([ -f "$SAMPLES/rollouts.jsonl" ] && echo --resume)
fi
REWARD=$1 VARIANT=$2
SAMPLES=$ROOT/samples
if [[ "$VARIANT" == *consistency* || "$VARIANT" == *branches* || "$VARIANT" == recipe_topk ]]; then
  SAMPLES=$ROOT/samples_topk
  with_logprobs
fi
case "$VARIANT" in
  recipe|recipe_topk) EXTRA=() ;;
  standardize) EXTRA=(--standardize) ;;
  mc)          EXTRA=(--lambda 1) ;;
  epochs6)     EXTRA=(--epochs 6) ;;
  layers16)    EXTRA=(--lora-layers 16) ;;
  half6)       EXTRA=(--samples-per-prompt 8 --epochs 6) ;;   # docs/training/steps/PLAN.md
  half12)      EXTRA=(--samples-per-prompt 8 --epochs 12) ;;
  *)           EXTRA=(${VARIANT//+/ }) ;;  # flags joined by +, e.g. --standardize+--lambda+1
esac
NAME=$(echo "$REWARD" | tr -c 'A-Za-z0-9\n' _)
OUT="$ROOT/$NAME/${VARIANT//[^A-Za-z0-9]/_}"
if [ -f "$OUT/vas_value.json" ]; then echo "== $OUT done"; exit 0; fi
mkdir -p "$OUT"
cp "$SAMPLES/rollouts.jsonl" "$SAMPLES/validation.jsonl" "$OUT/"
echo "== $(date -u +%H:%M:%S) $REWARD $VARIANT"
/usr/bin/time -f "%e s wall, %M KiB peak" \
  vas-proxy train --prompts "$ROOT/prompts.jsonl" --reward "$REWARD" --out "$OUT" \
  "${BASE[@]}" "${RECIPE[@]}" "${EXTRA[@]}" 2>&1 | grep -v "^\s*$" | tee "$OUT/train.log"
