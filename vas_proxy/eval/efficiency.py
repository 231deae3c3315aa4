"""Reward per nat: one figure per guided row that says how good its value model is, whatever
its beta (docs/design.md §1.10).

At small beta a guided policy gains beta·Σ Cov(Q̂, Q) and pays beta²/2·Σ Var(Q̂) of KL (sums
over a response's states, moments over each state's candidates), so

    gain = ρ · sd_w · sqrt(2 · KL)

where sd_w² = Σ Var(Q), the reward's variance within a prompt (all that guidance or Best-of-N
can move), and ρ is the value model's pooled within-state correlation with the true values:
ρ = 1 for perfect values. A row's *effective ρ* is read off the eval; the KL the model would
need to reach a target gain follows from the same law (an extrapolation: ρ falls slowly as beta
grows). Best-of-N gets a ρ too, at its KL bound, which is the goal a value model must beat.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

__all__ = ["bon_pools", "effective_rho", "exact_bon_kl", "kl_to_reach", "within_sd"]


def bon_pools(records: list[dict], reward: str) -> dict[tuple, list[float]]:
    """Each (prompt, sample)'s largest pool of base scores by `reward` (the `bon_scores` that
    Best-of-N rows picking by that reward keep)."""
    out: dict[tuple, list[float]] = {}
    for r in records:
        scores = r.get("bon_scores")
        if scores and r.get("bon_reward") == reward and r.get("method") == "bon":
            key = (r["prompt_index"], r["sample"])
            if len(scores) > len(out.get(key, ())):
                out[key] = [float(x) for x in scores]
    return out


def within_sd(records: list[dict], reward: str) -> float:
    """sd_w: the root mean within-prompt variance of base responses' `reward`. From Best-of-N's
    pools where the eval has them, else from base responses of one prompt at several seeds;
    nan when neither has two responses to a prompt."""
    groups = list(bon_pools(records, reward).values())
    if not groups:
        by_prompt: dict[int, list[float]] = defaultdict(list)
        for r in records:
            if r.get("method") == "base" and r["rewards"].get(reward) is not None:
                by_prompt[r["prompt_index"]].append(float(r["rewards"][reward]))
        groups = list(by_prompt.values())
    variances = [np.var(g, ddof=1) for g in groups if len(g) > 1]
    return math.sqrt(float(np.mean(variances))) if variances else math.nan


def effective_rho(gain: float, kl: float, sd: float) -> float:
    """gain / (sd_w · sqrt(2·KL)); nan without a positive KL and sd_w."""
    if not (kl > 0 and sd > 0) or math.isnan(gain):
        return math.nan
    return gain / (sd * math.sqrt(2 * kl))


def kl_to_reach(target: float, gain: float, kl: float) -> float:
    """The KL at which a row that gains `gain` at `kl` would gain `target`, by the same law:
    kl · (target / gain)², whatever sd_w is. nan unless the row gains."""
    if not gain > 0 or math.isnan(target) or math.isnan(kl):
        return math.nan
    return kl * (target / gain) ** 2


def exact_bon_kl(pools: dict[tuple, list[float]], n: int) -> float:
    """Best-of-n's KL to the base on each pool's empirical distribution, ties counted, averaged
    over pools. A reward level of probability p with F(v) = P(R ≤ v) is picked with probability
    F(v)ⁿ − (F(v) − p)ⁿ. The bound log n − (n−1)/n holds with equality only without ties: a
    binary reward pays far less."""
    kls = []
    for scores in pools.values():
        _, counts = np.unique(np.asarray(scores, dtype=np.float64), return_counts=True)
        p = counts / counts.sum()
        top = np.cumsum(p)
        picked = top ** n - np.clip(top - p, 0.0, None) ** n
        kls.append(float(np.sum(np.where(picked > 0, picked * np.log(picked / p), 0.0))))
    return float(np.mean(kls)) if kls else math.nan
