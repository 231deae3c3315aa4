#!/usr/bin/env bash
# Issue 13: value models trained with `train --residual` (docs/training/residual/PLAN.md):
# benchmarks/variant64.sh's residual variant, under the name its results cite.
#
#   bash benchmarks/residual.sh train vader|plain | revalidate | eval vader|plain
#   WORDS=1 bash benchmarks/residual.sh ...   # the same with --residual-words
VARIANT=residual${WORDS:+-words} exec bash "$(dirname "$0")/variant64.sh" "$@"
