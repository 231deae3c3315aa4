"""The one-step check: what a value model's ranking of one state's top-k candidates buys.

By the performance-difference lemma, guidance q gains over the base p the sum, over the states q
visits, of Σ_a (q(a|s) − p(a|s)) Q_p(s, a), and pays the sum of KL(q(·|s) ‖ p(·|s)). At base
states (small beta) both are estimated from `candidates.CandidateState`s: the KL from the value
model and the logprobs alone, the gain from the Monte-Carlo Q̂ of the completed candidates.
A state cut uniformly from a response of n tokens stands for its n positions, so a response's
predicted total is n × the state's term, averaged over states (docs/design.md §1.9).

q and p are `sampling.target_probs`, exactly the engine's target; the KL runs over every listed
candidate (top-k, as the engine), the gain over the completed ones, renormalised (the tail
beyond them is left out: an approximation that the design doc states).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..defaults import MAX_BETA
from ..sampling import kl, kl_to_base, target_probs
from ..stats import mean_se
from .candidates import CandidateState
from .validation import within_prompt_corr


def step_terms(logprobs: Sequence[float], values: Sequence[float], q_hat: Sequence[float],
               beta: float) -> tuple[float, float, float]:
    """(gain over the completed candidates, KL over all listed, KL over the completed) of one
    state; `values` are already in the engine's units (beta multiplies them)."""
    v = np.asarray(values, dtype=np.float64)
    lp = np.asarray(logprobs, dtype=np.float64)
    c = len(q_hat)
    qc, pc = target_probs(lp[:c], v[:c] - v[:c].mean(), beta), target_probs(lp[:c])
    gain = float(np.dot(qc - pc, np.asarray(q_hat, dtype=np.float64)))
    return gain, state_kl(lp, v, beta), kl(qc, pc)


def state_kl(logprobs: Sequence[float], values: Sequence[float], beta: float) -> float:
    """KL(q ‖ p) at one state over every listed candidate: the engine's target (§1.1)."""
    v = np.asarray(values, dtype=np.float64)
    lp = np.asarray(logprobs, dtype=np.float64)
    return kl_to_base(target_probs(lp, v - v.mean(), beta), lp)


def predicted_kl(states: list[CandidateState], values, beta: float) -> tuple[float, float]:
    """Predicted KL per response at `beta` (mean over states of n × the one-step KL over all
    listed candidates) ± its s.e.; needs no completions. `values`: each state's candidate
    values, or a function of beta returning them (`binary:` values tilt differently at each
    beta, `sampling.combine_values`)."""
    per_state = values(beta) if callable(values) else values
    return mean_se([s.n_tokens * state_kl(s.logprobs, v, beta)
                    for s, v in zip(states, per_state)])


def beta_for_kl(states: list[CandidateState], values, budget: float, *,
                tol: float = 1e-3) -> float | None:
    """The beta >= 0 whose predicted KL per response is `budget` (bisection: the KL of an
    exponential tilt grows with beta); None when even the largest beta stays below it."""
    def kl_at(beta: float) -> float:
        return predicted_kl(states, values, beta)[0]

    if kl_at(MAX_BETA) < budget:
        return None
    return _solve_beta(kl_at, budget, tol)


def _solve_beta(kl_at, budget: float, tol: float) -> float:
    """The beta in [0, MAX_BETA] where the increasing `kl_at` reaches `budget`: doubling, then
    bisection to a relative width `tol` (MAX_BETA when it never does)."""
    lo, hi = 0.0, 1.0
    while kl_at(hi) < budget and hi < MAX_BETA:
        lo, hi = hi, min(hi * 2, MAX_BETA)
    while hi - lo > tol * max(hi, 1e-9):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kl_at(mid) < budget else (lo, mid)
    return (lo + hi) / 2


def noise_ceiling(states: list[CandidateState], spec: str) -> dict:
    """How much of the within-state spread of Q̂ is signal: the within-state correlation of two
    halves of each candidate's completions, stepped up to all m (Spearman-Brown). Its square
    root caps the within-state correlation any value model can reach against Q̂, so a model's
    figure over it is its correlation with the true Q (disattenuated)."""
    first, second, groups = [], [], []
    for i, s in enumerate(states):
        r = np.asarray(s.rewards[spec], dtype=np.float64)
        if r.ndim != 2 or r.shape[0] < 2 or r.shape[1] < 2:
            continue
        half = r.shape[1] // 2
        first += list(r[:, :half].mean(axis=1))
        second += list(r[:, half:].mean(axis=1))
        groups += [i] * r.shape[0]
    half_r = within_prompt_corr(first, second, groups, "h").get("h_within_corr")
    if half_r is None:
        return {"split_half": None, "reliability": None, "ceiling": None}
    full = 2 * half_r / (1 + half_r) if half_r > -1 else -1.0
    return {"split_half": half_r, "reliability": full,
            "ceiling": float(np.sqrt(full)) if full > 0 else 0.0}


def reward_sd(states: list[CandidateState], spec: str) -> float:
    """The spread of the sample's full-response rewards: the unit of gains and of the oracle's
    beta."""
    flat = [r for s in states for per in s.rewards[spec] for r in per]
    return float(np.std(flat)) or 1.0


def predict(states: list[CandidateState], values: list[list[float]], spec: str,
            betas: Sequence[float]) -> dict:
    """Predicted response-level gain and KL per beta for one value model (`values[i]`: its
    scores of states[i]'s listed candidates), its within-state correlation with Q̂, and the
    cross-fitted oracle's gain at the KL the model pays over the completed candidates."""
    usable = [(s, v) for s, v in zip(states, values) if len(s.completions) >= 2]
    if not usable:
        raise ValueError("no state has two or more completed candidates")
    out: dict = {"reward": spec, "n_states": len(usable), "reward_sd": reward_sd(states, spec),
                 "betas": {}}
    usable_states = [s for s, _ in usable]
    q_hats = [[float(np.mean(r)) for r in s.rewards[spec]] for s in usable_states]
    preds, targets, groups = [], [], []
    for i, ((_, v), q_hat) in enumerate(zip(usable, q_hats)):
        preds += list(v[:len(q_hat)])
        targets += q_hat
        groups += [i] * len(q_hat)
    out.update(within_prompt_corr(preds, targets, groups, "candidates"))
    out["noise"] = noise_ceiling(usable_states, spec)
    for beta in betas:
        gains, kls, kls_c = [], [], []
        for (s, v), q_hat in zip(usable, q_hats):
            g, k, kc = step_terms(s.logprobs, v, q_hat, beta)
            gains.append(s.n_tokens * g)
            kls.append(s.n_tokens * k)
            kls_c.append(s.n_tokens * kc)
        row = {}
        for name, xs in (("gain", gains), ("kl", kls), ("kl_completed", kls_c)):
            row[name], row[name + "_se"] = mean_se(xs)
        # the oracle at the KL the model pays over the same (completed) candidates
        row.update(oracle_at_kl(usable_states, spec, row["kl_completed"], out["reward_sd"]))
        out["betas"][f"{beta:g}"] = row
    return out


def oracle_totals(states: list[CandidateState], spec: str, beta: float,
                  sd: float) -> tuple[float, float, float]:
    """The cross-fitted oracle's predicted gain ± s.e. and KL per response at `beta` (in units
    of `sd`)."""
    terms = [_oracle(s, spec, beta, sd) for s in states]
    gain, se = mean_se([s.n_tokens * g for s, (g, _) in zip(states, terms)])
    return gain, se, float(np.mean([s.n_tokens * k for s, (_, k) in zip(states, terms)]))


def oracle_at_kl(states: list[CandidateState], spec: str, budget: float, sd: float) -> dict:
    """The oracle at the beta where its KL over the completed candidates is `budget`
    (bisection; its KL grows with beta): what guidance by Q̂ itself buys for the same KL."""
    if budget <= 0:
        return {"oracle_beta": 0.0, "oracle_gain": 0.0, "oracle_gain_se": 0.0, "oracle_kl": 0.0}
    beta = _solve_beta(lambda b: oracle_totals(states, spec, b, sd)[2], budget, 1e-12)
    gain, se, kl_ = oracle_totals(states, spec, beta, sd)
    return {"oracle_beta": beta, "oracle_gain": gain, "oracle_gain_se": se, "oracle_kl": kl_}


def _oracle(s: CandidateState, spec: str, beta: float, sd: float) -> tuple[float, float]:
    """Gain and KL of guidance by the Monte-Carlo Q̂ itself, cross-fitted: weights from one half
    of each candidate's completions, the gain scored on the other half (and vice versa), so the
    noise that picks a candidate does not also score it."""
    r = np.asarray(s.rewards[spec], dtype=np.float64)  # (candidates, m)
    m = r.shape[1]
    if m < 2:
        return float("nan"), float("nan")
    lp = np.asarray(s.logprobs[:len(r)], dtype=np.float64)
    p = target_probs(lp)
    halves = (r[:, :m // 2].mean(axis=1), r[:, m // 2:].mean(axis=1))
    gain = kls = 0.0
    for pick, score in (halves, halves[::-1]):
        q = target_probs(lp, (pick - pick.mean()) / sd, beta)
        gain += float(np.dot(q - p, score)) / 2
        kls += kl(q, p) / 2
    return gain, kls
