"""Value models' within-state ranking on the candidate check's states, side by side and paired.

    python benchmarks/within_state.py REWARD SPEC [SPEC...]   [--json OUT]

For each value SPEC: the pooled within-state correlation of its values of the top completed
candidates with their Monte-Carlo values Q̂ (the mean reward of 4 completions each) over the
128 states of runs/candidates/states.jsonl (`python benchmarks/candidate_check.py sample`), and
each later SPEC minus the first, with a bootstrap standard error over states (2000 resamples,
seed 0). This is the part of a value model guidance uses (docs/design.md §1.9-1.10); the
figure is attenuated by Q̂'s noise, alike for every model, so differences compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from vas_proxy.train.candidates import STATES_FILE, CandidateState
from vas_proxy.train.rollouts import JsonlStore
from vas_proxy.train.validation import within_prompt_corr

STATES = ROOT / "runs/candidates" / STATES_FILE
RESAMPLES = 2000


def load_states(reward: str) -> list[CandidateState]:
    states = sorted(JsonlStore(STATES, CandidateState).load().values(), key=lambda s: s.key)
    states = [s for s in states if len(s.completions) >= 2]
    missing = [s.key for s in states if reward not in s.rewards]
    if missing:
        sys.exit(f"{STATES}: {len(missing)} states lack {reward!r} rewards "
                 "(candidate_check.py sample scores its REWARDS)")
    return states


def score(spec: str, states: list[CandidateState]) -> list[np.ndarray]:
    """The model's values of every listed candidate of each state, as the engine scores them."""
    from vas_proxy.values.loader import load_value

    value = load_value(spec, quiet=True)
    return [np.asarray(value.score(s.upstream_prompt, s.prefix, s.texts), dtype=float)
            for s in states]


def within(xs: list[np.ndarray], ys: list[list[float]]) -> float | None:
    """Pooled within-state correlation of per-state score lists (ys sets each state's length)."""
    pred = [float(v) for x, y in zip(xs, ys) for v in x[:len(y)]]
    groups = [i for i, y in enumerate(ys) for _ in y]
    return within_prompt_corr(pred, [v for y in ys for v in y], groups, "c").get("c_within_corr")


def compare(reward: str, specs: list[str]) -> dict:
    states = load_states(reward)
    q_hats = [[float(np.mean(r)) for r in s.rewards[reward]] for s in states]
    vals = {spec: score(spec, states) for spec in specs}
    rng = np.random.default_rng(0)
    draws = [rng.integers(0, len(states), len(states)) for _ in range(RESAMPLES)]

    def boot(spec: str) -> np.ndarray:
        rs = [within([vals[spec][i] for i in d], [q_hats[i] for i in d]) for d in draws]
        return np.array([np.nan if r is None else r for r in rs])

    first = specs[0]
    boots = {spec: boot(spec) for spec in specs}
    rows = []
    for spec in specs:
        r = within(vals[spec], q_hats)
        row = {"spec": spec, "within_corr": r, "se": float(np.nanstd(boots[spec]))}
        if spec != first:
            diff = boots[spec] - boots[first]
            row["minus_first"] = r - within(vals[first], q_hats)
            row["minus_first_se"] = float(np.nanstd(diff))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"reward": reward, "states": len(states), "resamples": RESAMPLES, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reward")
    ap.add_argument("specs", nargs="+", metavar="SPEC")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    out = compare(a.reward, a.specs)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
