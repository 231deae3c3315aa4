"""Re-run `train`'s held-out validation on finished run directories (their final checkpoint,
rollouts and validation halves), printing the current metrics: used to add the within-prompt
correlation to runs made before it existed. `--value SPEC@RUN` validates another model (e.g.
bundled:plain) on RUN's held-out halves, so old and new models meet on the same data.

    python benchmarks/revalidate.py runs/ablation/*/*/ [--value SPEC@RUN] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def heldout_split(run: Path):
    """A finished run's metadata, its rollouts by (prompt, sample) and its held-out prompts,
    drawn as `train` drew them (same count, fraction and seed)."""
    from vas_proxy.train.collect import heldout_prompts
    from vas_proxy.train.rollouts import ROLLOUTS_FILE, JsonlStore, Rollout
    from vas_proxy.values.store import read_checkpoint_config

    meta = read_checkpoint_config(run)["metadata"]
    rollouts = JsonlStore(run / ROLLOUTS_FILE, Rollout).load()
    held = heldout_prompts(len({k[0] for k in rollouts}), meta["args"]["heldout_frac"],
                           meta["args"]["seed"])
    return meta, rollouts, held


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*")
    ap.add_argument("--value", action="append", default=[], metavar="SPEC@RUN")
    ap.add_argument("--json")
    a = ap.parse_args()
    from vas_proxy.train.rollouts import VALIDATION_FILE, HalfCompletions, JsonlStore
    from vas_proxy.train.validation import evaluate
    from vas_proxy.values.loader import checkpoint_dir
    from vas_proxy.values.scorer import load_potential
    from vas_proxy.values.store import load_value_model

    pairs = [(Path(r), Path(r), str(r)) for r in a.runs]
    for item in a.value:
        spec, _, run = item.rpartition("@")
        pairs.append((checkpoint_dir(spec), Path(run), item))
    out = {}
    for model_dir, run, label in pairs:
        if not (model_dir / "vas_value.json").is_file() or not (run / "vas_value.json").is_file():
            print(f"{label}: skipped, no finished model in {model_dir} or {run}", file=sys.stderr)
            continue
        model, tok, config = load_value_model(model_dir)
        # the split, reward and halves are the run's own
        meta, rollouts, held = heldout_split(run)
        spec = meta["reward"]
        held_r = [r for k, r in sorted(rollouts.items()) if k[0] in held]
        halves = [h for k, h in sorted(JsonlStore(run / VALIDATION_FILE, HalfCompletions)
                                       .load().items()) if k[0] in held]
        m = evaluate(model, tok, held_r, halves, spec,
                     potential=load_potential(model_dir, config))
        out[label] = m
        print(f"{label}: half corr {m.get('val_half_corr'):.3f}, within-prompt "
              f"{m.get('val_half_within_corr'):.3f} (n={m.get('val_half_within_n')}); final "
              f"{m.get('val_final_corr'):.3f}, within {m.get('val_final_within_corr'):.3f}",
              flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
