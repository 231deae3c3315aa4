"""Re-run `train`'s held-out validation on finished run directories (their final checkpoint,
rollouts and validation halves), printing the current metrics: used to add the within-prompt
correlation to runs made before it existed. `--value SPEC@RUN` validates another model (e.g.
bundled:plain) on RUN's held-out halves, so old and new models meet on the same data.
`--paired A B` compares two runs on the same held-out halves: B's half-response correlation
minus A's, with a bootstrap s.e. over the halves (4000 draws, seed 0).

    python benchmarks/revalidate.py runs/ablation/*/*/ [--value SPEC@RUN] [--json OUT]
    python benchmarks/revalidate.py --paired runs/ablation/plain/half6 runs/ablation/plain/half12
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


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


def half_predictions(model_dir: Path, run: Path) -> dict[tuple, tuple[int, float, float]]:
    """{(prompt, sample): (prompt, V(prompt + half), mean reward of its completions)} of the
    model in `model_dir` on RUN's held-out halves, as `train` validates them."""
    from vas_proxy.train.rollouts import VALIDATION_FILE, HalfCompletions, JsonlStore
    from vas_proxy.train.validation import half_predictions as predict
    from vas_proxy.values.scorer import load_potential
    from vas_proxy.values.store import load_value_model

    model, tok, config = load_value_model(model_dir)
    meta, rollouts, held = heldout_split(run)
    halves = [h for k, h in sorted(JsonlStore(run / VALIDATION_FILE, HalfCompletions)
                                   .load().items()) if k[0] in held]
    preds, targets = predict(model, tok, list(rollouts.values()), halves, meta["reward"],
                             potential=load_potential(model_dir, config))
    return {h.key: (h.prompt_index, v, t) for h, v, t in zip(halves, preds, targets)}


def paired(a: Path, b: Path) -> dict:
    """B's held-out half-response correlation minus A's, on the halves both hold."""
    from vas_proxy.stats import bootstrap_indices

    pa, pb = half_predictions(a, a), half_predictions(b, b)
    keys = sorted(set(pa) & set(pb))
    if not keys or any(pa[k][2] != pb[k][2] for k in keys):
        sys.exit(f"{a} and {b} do not share held-out halves with the same targets")
    va, vb = (np.array([p[k][1] for k in keys]) for p in (pa, pb))
    t = np.array([pa[k][2] for k in keys])

    def diff(idx) -> float:
        return float(np.corrcoef(vb[idx], t[idx])[0, 1] - np.corrcoef(va[idx], t[idx])[0, 1])

    everything = np.arange(len(keys))
    boots = [diff(idx) for idx in bootstrap_indices(len(keys))]
    return {"a": str(a), "b": str(b), "halves": len(keys),
            "corr_a": float(np.corrcoef(va, t)[0, 1]), "corr_b": float(np.corrcoef(vb, t)[0, 1]),
            "b_minus_a": diff(everything), "se": float(np.nanstd(boots)),
            "interval_95": [float(np.nanpercentile(boots, 2.5)),
                            float(np.nanpercentile(boots, 97.5))]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*")
    ap.add_argument("--value", action="append", default=[], metavar="SPEC@RUN")
    ap.add_argument("--paired", nargs=2, action="append", default=[], metavar=("A", "B"))
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.paired:
        res = [paired(Path(x), Path(y)) for x, y in a.paired]
        for r in res:
            print(f"{r['b']} − {r['a']}: half corr {r['corr_b']:.3f} − {r['corr_a']:.3f} = "
                  f"{r['b_minus_a']:+.3f} ± {r['se']:.3f} (95% {r['interval_95'][0]:+.3f} to "
                  f"{r['interval_95'][1]:+.3f}; {r['halves']} halves)", flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
        return 0
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
