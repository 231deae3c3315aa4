"""The VAS target distribution and its samplers: pure math, no IO (docs/design.md §1, §3).

Target over the k highest-logprob candidates the upstream returned for a step:

    q(a) ∝ exp((logp(a) + Σ_i beta·w_i·(V_i(a) − mean_topk V_i)) / T)

renormalised over those k. Tokens outside the top-k get zero mass. beta = 0, T = 1 gives the
upstream's top-k distribution renormalised, exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def combine_values(values: Mapping[str, Sequence[float]], weights: Mapping[str, float] | None,
                   k: int, *, beta: float = 0.0,
                   binary: Mapping[str, float] | None = None) -> np.ndarray:
    """Σ_i w_i·(V_i − mean_topk V_i) for the k candidates; missing weights default to 1.

    Centring each value model by its own top-k mean is what the method's code does; it leaves
    the target unchanged (a constant shift cancels in the softmax) but keeps traces readable.
    A model named in `binary` (name → its scale s: it scores P·s, P the probability of a 0/1
    reward) contributes `binary_tilt(P, beta·w·s) / beta` instead, so that beta times the sum
    is the exact soft tilt (docs/design.md §1.13); at beta 0 it is linear, as nothing tilts.
    """
    total = np.zeros(k, dtype=np.float64)
    for name, v in values.items():
        w = 1.0 if weights is None else float(weights.get(name, 0.0))
        if w == 0.0:
            continue
        arr = np.asarray(v, dtype=np.float64)
        if arr.shape != (k,):
            raise ValueError(f"value model {name!r} returned {arr.shape} scores for {k} candidates")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"value model {name!r} returned a non-finite score")
        scale = (binary or {}).get(name)
        if scale and beta:
            arr = binary_tilt(arr / scale, beta * w * scale) / beta
            w = 1.0
        total += w * (arr - arr.mean())
    return total


def binary_tilt(probs: np.ndarray | Sequence[float], strength: float) -> np.ndarray:
    """log E[exp(b·r)] for a 0/1 reward r with P(r = 1) = `probs`: log(1 + (e^b − 1)·P).

    p·exp(this) is the optimum of reward − KL/b one step at a time (the whole-response tilt
    p·exp(b·r) factorised), where p·exp(b·P) agrees with it only to first order in b. P is
    clipped to [0, 1]; computed in log space so that a large b does not overflow."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    b = float(strength)
    if b > 0:  # log(e^b − 1) = b + log(1 − e^−b)
        with np.errstate(divide="ignore"):
            return np.logaddexp(0.0, b + np.log(-np.expm1(-b)) + np.log(p))
    return np.log1p(np.expm1(b) * p)


def target_logits(logprobs: Sequence[float], values: np.ndarray | Sequence[float] | None,
                  beta: float) -> np.ndarray:
    """Unnormalised log-target logp + beta·V; `target_probs` applies the temperature."""
    z = np.asarray(logprobs, dtype=np.float64)
    if values is not None and beta != 0:
        z = z + beta * np.asarray(values, np.float64)
    return z


# Below this the softmax is already the greedy limit in float64 (a logit gap of 1e-27 gives
# exp(-1000) = 0), and dividing by a smaller T would overflow to inf - inf = NaN.
_MIN_TEMPERATURE = 1e-30


def target_probs(logprobs: Sequence[float], values: np.ndarray | Sequence[float] | None = None,
                 beta: float = 0.0, temperature: float = 1.0) -> np.ndarray:
    """The docs/design.md §1 target q over the given candidates (probabilities summing to 1).

    temperature 0 is greedy: all mass on the argmax of logp + beta·V (first one on ties).
    Called once or twice per generated token on a handful of candidates, so it uses numpy's
    ufuncs directly (their Python wrappers, `z.max()`, `q.sum()`, cost more than the math).
    """
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    z = target_logits(logprobs, values, beta)
    if z.size == 0:
        raise ValueError("no candidates")
    if temperature == 0:
        q = np.zeros_like(z)
        q[int(np.argmax(z))] = 1.0
        return q
    z = z - np.maximum.reduce(z)  # shift first, so a tiny T cannot overflow
    if temperature != 1.0:
        z = z / max(temperature, _MIN_TEMPERATURE)
    q = np.exp(z)
    return q / np.add.reduce(q)


def apply_top_p(q: np.ndarray, top_p: float) -> np.ndarray:
    """Nucleus truncation applied to the *target* q (not the base): keep the smallest set of
    most-probable candidates whose mass reaches top_p, renormalise. top_p >= 1 is a no-op."""
    if top_p >= 1.0:
        return q
    if top_p <= 0:
        raise ValueError("top_p must be in (0, 1]")
    order = np.argsort(-q, kind="stable")
    cum = np.cumsum(q[order])
    keep = order[: int(np.searchsorted(cum, top_p - 1e-12) + 1)]
    out = np.zeros_like(q)
    out[keep] = q[keep]
    return out / out.sum()


def sample_index(q: np.ndarray, rng: np.random.Generator) -> int:
    """Draw one index from q with the request's own generator (same seed → same draw)."""
    u = rng.random()
    cum = np.add.accumulate(q)
    return min(int(cum.searchsorted(u * cum[-1], side="right")), len(q) - 1)


def speculative_accept(q: np.ndarray, d: np.ndarray, draft: int | None,
                       rng: np.random.Generator) -> tuple[bool, int]:
    """Leviathan et al. (2023) acceptance: accept `draft` with prob min(1, q/d); on reject draw
    from norm(max(0, q − d)). The result is distributed exactly as q for any draft law d known
    on the candidates (d may leave mass outside them: the upstream's full-vocabulary p).
    `draft=None`: the drafted token is not a candidate, q = 0 there, so it is always rejected.
    Returns (accepted, token index)."""
    if draft is not None:
        if d[draft] <= 0:
            raise ValueError("draft token has zero draft probability")
        if rng.random() < min(1.0, q[draft] / d[draft]):
            return True, draft
    residual = np.maximum(q - d, 0.0)
    if residual.sum() <= 0:  # q == d up to rounding: any sample from q is exact
        residual = q
    return False, sample_index(residual / residual.sum(), rng)


def kl_step(q: np.ndarray, logprobs: Sequence[float], chosen: int) -> float:
    """log q − log p of the chosen token, p = base top-k renormalised (the eval's KL estimator)."""
    p = target_probs(logprobs)
    return float(np.log(q[chosen]) - np.log(p[chosen]))


def kl(q: np.ndarray, p: np.ndarray) -> float:
    """KL(q ‖ p) over the same candidates (terms where q is 0 add nothing)."""
    keep = q > 0
    return float(np.sum(q[keep] * (np.log(q[keep]) - np.log(p[keep]))))


def kl_to_base(q: np.ndarray, logprobs: Sequence[float]) -> float:
    """KL(q ‖ p) at one state, p = base top-k renormalised: `kl_step`'s expectation under q.
    Summed along a guided path it estimates the response's KL without the chosen token's
    noise (the chain rule; calibrate's check)."""
    return kl(q, target_probs(logprobs))


def expected_tokens_per_call(alpha: float, draft_len: int) -> float:
    """Tokens one speculative call yields: accepted drafts, plus the residual sample after a
    rejection (no bonus token: the upstream reports no distribution past its last draft)."""
    if draft_len <= 0:
        return 1.0
    if alpha >= 1.0:
        return float(draft_len)
    return (1.0 - alpha ** draft_len) / (1.0 - alpha)


def choose_draft_len(alpha: float, max_len: int, token_cost: float = 0.05) -> int:
    """Draft length maximising tokens per unit cost, a call costing 1 and each drafted (billed)
    token `token_cost` more. Low acceptance → short drafts, high → long."""
    best, best_val = 1, 0.0
    for n in range(1, max_len + 1):
        val = expected_tokens_per_call(alpha, n) / (1.0 + token_cost * n)
        if val > best_val + 1e-12:
            best, best_val = n, val
    return best
