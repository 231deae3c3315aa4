"""The ensemble plan's pre-check (in sample, on the candidate check's states): each model's and
the average's within-state correlation with the candidates' Monte-Carlo values, and c, the two
models' within-state correlation with each other over all listed candidates.

    python docs/training/ensemble/precheck.py REWARD SPEC_A SPEC_B
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from vas_proxy.train.candidates import STATES_FILE, CandidateState
from vas_proxy.train.rollouts import JsonlStore
from vas_proxy.train.validation import within_prompt_corr
from vas_proxy.values.loader import load_value


def within(xs: list[np.ndarray], ys: list[list[float]]) -> float | None:
    """Pooled within-state correlation of per-state score lists (ys sets each state's length)."""
    pred = [float(v) for x, y in zip(xs, ys) for v in x[:len(y)]]
    groups = [i for i, y in enumerate(ys) for _ in y]
    return within_prompt_corr(pred, [v for y in ys for v in y], groups, "c").get("c_within_corr")


def main() -> None:
    reward, specs = sys.argv[1], sys.argv[2:4]
    states = sorted(JsonlStore(ROOT / "runs/candidates" / STATES_FILE, CandidateState)
                    .load().values(), key=lambda s: s.key)
    states = [s for s in states if len(s.completions) >= 2]
    q_hats = [[float(np.mean(r)) for r in s.rewards[reward]] for s in states]
    vals = {}
    for spec in specs:
        value = load_value(spec, quiet=True)
        vals[spec] = [np.asarray(value.score(s.upstream_prompt, s.prefix, s.texts), dtype=float)
                      for s in states]
        print(spec, within(vals[spec], q_hats), flush=True)
    a, b = (vals[s] for s in specs)
    print("average", within([(x + y) / 2 for x, y in zip(a, b)], q_hats))
    print("pooled within-state corr between models", within(a, [list(y) for y in b]))


if __name__ == "__main__":
    main()
