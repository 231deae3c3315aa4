"""Judge finished run directories again with the current `train` verdict: its rules change (the
held-out trend per epoch replaced the loss-drop "over-fit" rule), the runs' figures do not. Reads
each run's last validation, training losses and per-epoch held-out figures (metrics.jsonl) and
its training rollouts' rewards; nothing is re-measured.

    python benchmarks/rejudge.py runs/ablation/*/*/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    a = ap.parse_args()
    from revalidate import heldout_split  # benchmarks/: the split `train` drew

    from vas_proxy.train.report import heldout_corrs, train_losses
    from vas_proxy.train.trainer import METRICS_FILE
    from vas_proxy.train.verdict import data_stats, judge

    for run in map(Path, a.runs):
        if not (run / "vas_value.json").is_file():
            print(f"{run}: skipped, no finished model", file=sys.stderr)
            continue
        meta, rollouts, held = heldout_split(run)
        args, spec = meta["args"], meta["reward"]
        train = [r for k, r in sorted(rollouts.items()) if k[0] not in held]
        stats = data_stats([r.rewards[spec] for r in train], [r.prompt_index for r in train],
                           train_losses(run / METRICS_FILE), heldout_corrs(run / METRICS_FILE))
        verdict = judge(meta["validation"], stats, samples_per_prompt=args["samples_per_prompt"])
        print(f"== {run}\n{verdict.text()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
