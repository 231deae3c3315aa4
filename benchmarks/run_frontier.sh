#!/usr/bin/env bash
# The frontier evaluations of README Results, fixed before they ran: 64 held-out prompts x 2
# seeds (samples 0 and 1: seeds 0-63 and 64-127), 64 tokens, top-20, the default (adaptive)
# speculation, no response cache, two generations in flight. Settings run in this order, each
# resumable (--resume skips what results.jsonl already holds): Best-of-N 1..16 (one pool),
# VAS beta 4, base, VAS beta 2, Best-of-2 over VAS beta 4, value-pruned Best-of-16 and -8.
# (The vader run had value-pruned Best-of-16 second; the plain run, written after it, puts the
# pruned modes last, the ones that lost on vader. Every generation is seeded on its own, so
# the order changes no record, only what a stopped run has.)
#
#   bash benchmarks/run_frontier.sh              # vader, guided by bundled:positivity
#   FRONTIER=plain bash benchmarks/run_frontier.sh   # plain, guided by bundled:plain
set -euo pipefail
case "${FRONTIER:-vader}" in
  vader) REWARD=vader VALUE=positivity=bundled:positivity OUT=${OUT:-docs/results/frontier}
         SERVER=llama-cpp-python ;;  # the embedded default when it ran
  plain) REWARD=plain VALUE=plain=bundled:plain OUT=${OUT:-docs/results/frontier_plain}
         SERVER=llama-server ;;
  *) echo "FRONTIER is vader or plain" >&2; exit 2 ;;
esac
COMMON=(--prompts data/prompts/everyday_heldout.jsonl --limit 64 --samples 2 --seed 0
        --reward vader --reward plain --bon-reward "$REWARD" --value "$VALUE"
        --embedded "$SERVER" --max-tokens 64 --out "$OUT" --resume --quiet)
run() { echo "== $(date -u +%H:%M:%S) $*"; vas-proxy eval "${COMMON[@]}" "$@"; }
run --beta none --best-of 1,2,4,8,16
run --beta 4 --best-of none
run --beta 0 --best-of none
run --beta 2 --best-of none
run --beta none --best-of none --guided-best-of 2 --guided-beta 4
run --beta none --best-of none --pruned-best-of 16
run --beta none --best-of none --pruned-best-of 8
echo "== $(date -u +%H:%M:%S) done"
