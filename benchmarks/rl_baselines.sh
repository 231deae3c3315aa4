#!/usr/bin/env bash
# Issue 15: the RL baselines against VAS and Best-of-N (docs/baselines/PLAN.md, written before
# any ran). Each step is resumable and skipped when done; run with nothing else beside it.
#
#   bash benchmarks/rl_baselines.sh sample    # the shared rollouts (runs/rl/samples)
#   bash benchmarks/rl_baselines.sh train     # the four tuned models (runs/rl/<name>)
#   bash benchmarks/rl_baselines.sh eval      # their rows in docs/results/frontier_plain
#   bash benchmarks/rl_baselines.sh compose   # VAS mixing two value models, same directory
#   python benchmarks/rl_results.py           # forgetting, tables, plots: docs/baselines/
set -euo pipefail
ROOT=${RL_DIR:-runs/rl}
OUT=docs/results/frontier_plain
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
COMMON=(--rollouts "$ROOT/samples" --lr 1e-4 --lora-r 16 --lora-layers 8 --seed 0 --resume)
tune() {  # NAME ARGS...
  local name=$1; shift
  stamp "train $name"
  /usr/bin/time -f "%e s wall, %M KiB peak" \
    vas-proxy baseline rl "$@" "${COMMON[@]}" --out "$ROOT/$name" 2>&1 | tee -a "$ROOT/$name.log"
}
EVAL=(--prompts data/prompts/everyday_heldout.jsonl --limit 64 --samples 2 --seed 0
      --reward vader --reward plain --bon-reward plain --embedded llama-server
      --max-tokens 64 --out "$OUT" --resume --quiet)
case "${1:?sample, train, eval or compose}" in
  sample)
    stamp sample
    vas-proxy train --prompts data/prompts/everyday.jsonl --reward vader --out "$ROOT/samples" \
      --samples-per-prompt 8 --max-tokens 64 --heldout-frac 0.05 --val-completions 4 --seed 0 \
      --no-logprobs --concurrency 4 --epochs 0 --quiet \
      $([ -f "$ROOT/samples/rollouts.jsonl" ] && echo --resume) ;;
  train)
    tune dpo_b0.1 --method dpo --reward plain --beta 0.1 --epochs 3 --batch-size 8
    tune dpo_b0.5 --method dpo --reward plain --beta 0.5 --epochs 3 --batch-size 8
    tune grpo --method grpo --reward plain --beta 0.04 --steps 100 --generations 4 \
      --prompts-per-step 2 --max-tokens 64
    tune dpo_mix --method dpo --reward vader --reward plain --weights vader=0.5,plain=0.5 \
      --beta 0.1 --epochs 3 --batch-size 8 ;;
  eval)
    stamp eval
    vas-proxy eval "${EVAL[@]}" --value plain=bundled:plain --beta none --best-of none \
      --tuned "dpo_b0.1=$ROOT/dpo_b0.1" --tuned "dpo_b0.5=$ROOT/dpo_b0.5" \
      --tuned "grpo=$ROOT/grpo" --tuned "dpo_mix=$ROOT/dpo_mix" ;;
  compose)
    stamp compose
    vas-proxy eval "${EVAL[@]}" --value plain=bundled:plain \
      --value positivity=bundled:positivity --beta 4 --best-of none \
      --weights plain=0.5,positivity=0.5 ;;
esac
stamp done
