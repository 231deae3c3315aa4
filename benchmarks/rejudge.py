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
    from vas_proxy.train.collect import heldout_prompts
    from vas_proxy.train.report import heldout_corrs, read_metrics
    from vas_proxy.train.rollouts import ROLLOUTS_FILE, JsonlStore, Rollout
    from vas_proxy.train.trainer import METRICS_FILE
    from vas_proxy.train.verdict import data_stats, judge
    from vas_proxy.values.store import read_checkpoint_config

    for run in map(Path, a.runs):
        if not (run / "vas_value.json").is_file():
            print(f"{run}: skipped, no finished model", file=sys.stderr)
            continue
        meta = read_checkpoint_config(run)["metadata"]
        args, spec = meta["args"], meta["reward"]
        rollouts = JsonlStore(run / ROLLOUTS_FILE, Rollout).load()
        held = heldout_prompts(len({k[0] for k in rollouts}), args["heldout_frac"], args["seed"])
        train = [r for k, r in sorted(rollouts.items()) if k[0] not in held]
        losses = [m["loss"] for m in read_metrics(run / METRICS_FILE)
                  if m.get("kind") == "train" and m.get("loss") is not None]
        stats = data_stats([r.rewards[spec] for r in train], [r.prompt_index for r in train],
                           losses, heldout_corrs(run / METRICS_FILE))
        verdict = judge(meta["validation"], stats, samples_per_prompt=args["samples_per_prompt"])
        print(f"== {run}\n{verdict.text()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
