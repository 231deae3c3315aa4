#!/usr/bin/env bash
# Issue 13, deliverable 5: the bundled value models retrained at the horizon they are judged at
# (64 tokens), on 209 prompts, with --standardize (docs/training/retrain64/PLAN.md, written
# before any ran). The samples are the RL baselines' (runs/rl/samples: 8 base-policy responses
# of 64 tokens per prompt of data/prompts/everyday.jsonl, 5% of prompts held out, 4 completions
# of each held-out half-response); each model trains on a copy of them. Resumable; run with
# nothing else beside it.
#
#   bash benchmarks/retrain64.sh train plain|vader    # runs/retrain64/<reward>
#   bash benchmarks/retrain64.sh revalidate           # old and new models on the same halves
#   bash benchmarks/retrain64.sh eval 2|4 [plain|vader]  # a VAS row in docs/results/frontier_plain
set -euo pipefail
ROOT=${RETRAIN_DIR:-runs/retrain64}
SAMPLES=${SAMPLES_DIR:-runs/rl/samples}
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
DATA=(--prompts data/prompts/everyday.jsonl --samples-per-prompt 8 --max-tokens 64
      --heldout-frac 0.05 --val-completions 4 --seed 0 --no-logprobs --concurrency 4)
# RECIPE_EXTRA: flags added to the recipe (benchmarks/residual.sh passes --residual)
# (--min-steps 0: as these runs were made; 3 epochs here are 597 steps anyway)
RECIPE=(--epochs 3 --min-steps 0 --lr 5e-4 --lora-r 16 --lora-layers 8 --batch-size 8
        --standardize ${RECIPE_EXTRA:-})
case "${1:?train, revalidate or eval}" in
  train)
    REWARD=${2:?plain or vader}; OUT="$ROOT/$REWARD"
    if [ -f "$OUT/vas_value.json" ]; then echo "== $OUT done"; exit 0; fi
    mkdir -p "$OUT"
    [ -f "$OUT/rollouts.jsonl" ] || cp "$SAMPLES/rollouts.jsonl" "$SAMPLES/validation.jsonl" "$OUT/"
    stamp "train $REWARD"
    /usr/bin/time -f "%e s wall, %M KiB peak" \
      vas-proxy train "${DATA[@]}" "${RECIPE[@]}" --reward "$REWARD" --out "$OUT" \
      --save-every 100 --quiet $([ -f "$OUT/train_state.pt" ] && echo --resume) \
      2>&1 | tee -a "$OUT/train.log" ;;
  revalidate)
    stamp revalidate
    python benchmarks/revalidate.py "$ROOT/plain" "$ROOT/vader" \
      --value bundled:plain@"$ROOT/plain" --value bundled:positivity@"$ROOT/vader" \
      --json docs/training/retrain64/revalidate.json ;;
  eval)
    BETA=${2:?beta}; REWARD=${3:-plain}
    NAME=${REWARD/vader/positivity}64
    stamp "eval $NAME beta $BETA"
    vas-proxy eval --prompts data/prompts/everyday_heldout.jsonl --limit 64 --samples 2 --seed 0 \
      --reward vader --reward plain --bon-reward plain --embedded llama-server --max-tokens 64 \
      --out docs/results/frontier_plain --resume --quiet \
      --value "$NAME=$ROOT/$REWARD" --beta "$BETA" --best-of none ;;
esac
stamp done
