"""Could a beta schedule raise reward per nat? (plan fixed before the run:
docs/training/kl_law/SCHEDULE_PLAN.md)

    python benchmarks/beta_schedule.py   # needs candidate_check.py sample's states

For each model, on the candidate check's states: the one-step reward per nat of one beta for
every state, Σ_b C_b / √(Σ_b V_b), against a beta per quartile group b of states fitted as
β_b ∝ C_b / V_b, cross-fitted over the candidates' completions (fit on two, score on the other
two, both ways). C: length-weighted Cov_p(Q̂, Q_MC) over the completed candidates; V: Var_p(Q̂).
Writes docs/training/kl_law/SCHEDULE.md.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from vas_proxy.sampling import target_probs
from vas_proxy.train.candidates import STATES_FILE, CandidateState
from vas_proxy.train.rollouts import JsonlStore

ABL = "runs/ablation"
MODELS = [  # (label, value SPEC, reward SPEC, its noise ceiling resolved in §1.9)
    ("bundled plain", "bundled:plain", "plain", False),
    ("plain64", "runs/retrain64/plain", "plain", False),
    ("positivity64", "runs/retrain64/vader", "vader", True),
    ("bundled positivity", "bundled:positivity", "vader", True),
    ("asks", f"{ABL}/py_unseen_rewards_asks/recipe", "py:unseen_rewards:asks", True),
    ("asks round 3", "runs/ivo/round3", "py:unseen_rewards:asks", True),
    ("diversity", f"{ABL}/py_unseen_rewards_diversity/recipe", "py:unseen_rewards:diversity",
     True),
    ("personal", "bundled:personal", "interests:gardener", True),
]
OUT = ROOT / "docs/training/kl_law/SCHEDULE.md"
GROUPS = 4


def moments(s: CandidateState, scores, spec: str) -> tuple[float, float, float] | None:
    """(Cov with completions 0-1, Cov with completions 2-3, Var of Q̂), each × n, over the
    completed candidates under the base renormalised."""
    r = np.asarray(s.rewards.get(spec, []), dtype=np.float64)
    if r.ndim != 2 or r.shape[0] < 2 or r.shape[1] < 4:
        return None
    c = r.shape[0]
    p = target_probs(s.logprobs[:c])
    v = np.asarray(scores[:c], dtype=np.float64)
    dv = v - p @ v
    covs = []
    for half in (r[:, :2].mean(1), r[:, 2:4].mean(1)):
        covs.append(float(p @ (dv * (half - p @ half))) * s.n_tokens)
    return covs[0], covs[1], float(p @ dv ** 2) * s.n_tokens


def ratio(m: np.ndarray, groups: np.ndarray) -> float:
    """Cross-fitted schedule over constant: m rows (cov_a, cov_b, var), groups per row."""
    def const(cov):
        return cov.sum() / math.sqrt(m[:, 2].sum())

    def sched(fit, score):
        w = np.zeros(len(m))
        for g in range(GROUPS):
            i = groups == g
            v = m[i, 2].sum()
            w[i] = max(fit[i].sum(), 0.0) / v if v > 0 else 0.0
        kl = float((w ** 2 * m[:, 2]).sum())
        return float((w * score).sum()) / math.sqrt(kl) if kl > 0 else 0.0

    base = (const(m[:, 0]) + const(m[:, 1])) / 2
    fitted = (sched(m[:, 0], m[:, 1]) + sched(m[:, 1], m[:, 0])) / 2
    return fitted / base if base > 0 else math.nan


def quartiles(x: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.quantile(x, [0.25, 0.5, 0.75]), x, side="right")


def main() -> None:
    from vas_proxy.values.loader import load_value

    states = sorted(JsonlStore(ROOT / "runs/candidates" / STATES_FILE, CandidateState)
                    .load().values(), key=lambda s: s.key)
    lines = ["# A beta schedule against one beta (one-step, cross-fitted)", "",
             ("Plan: SCHEDULE_PLAN.md. Made by `python benchmarks/beta_schedule.py` on the "
             f"candidate check's {len(states)} states. Ratio: the schedule's one-step reward per "
             "nat over one beta's (1 = no better); ± bootstrap s.e. over states (1000, seed 0)."),
             "", "| model | reward | resolved | states | position ratio | dispersion ratio |",
             "|---|---|---|---|---|---|"]
    rng = np.random.default_rng(0)
    for label, spec, reward, resolved in MODELS:
        value = load_value(spec, quiet=True)
        rows, pos = [], []
        for s in states:
            got = moments(s, value.score(s.upstream_prompt, s.prefix, s.texts), reward)
            if got is not None:
                rows.append(got)
                pos.append(s.t / max(s.n_tokens, 1))
        m = np.asarray(rows)
        cells = []
        for feature in (np.asarray(pos), m[:, 2]):
            g = quartiles(feature)
            est = ratio(m, g)
            boot = []
            for _ in range(1000):
                i = rng.integers(0, len(m), len(m))
                boot.append(ratio(m[i], quartiles(feature[i])))
            cells.append(f"{est:.2f} ± {np.nanstd(boot):.2f}")
        lines.append(f"| {label} | {reward.rsplit(':', 1)[-1]} | {'yes' if resolved else 'no'} "
                     f"| {len(m)} | {cells[0]} | {cells[1]} |")
        print(lines[-1], flush=True)
    OUT.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
