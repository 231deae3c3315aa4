"""Reward per nat (vas_proxy/eval/efficiency.py): the law gain = ρ·sd_w·√(2·KL) on a guided
policy whose exact gain and KL are computed, Best-of-N's exact KL with and without ties, sd_w
from pools and from base draws, and summary.md's section."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vas_proxy.bestofn import kl_bound
from vas_proxy.eval.efficiency import (
    bon_pools,
    effective_rho,
    exact_bon_kl,
    kl_to_reach,
    within_sd,
)
from vas_proxy.eval.report import per_nat_lines, summarise


@pytest.mark.parametrize("rho", [0.3, 0.7, 1.0])
def test_small_beta_guidance_follows_the_law(rho):
    """T steps of K candidates, reward = Σ_t x[t, chosen]; the value model's scores correlate
    ρ with x. Exact per-step tilts give the gain and KL: at small beta the effective ρ read off
    them is the model's ρ (tolerance 0.05: first-order law, 4000 fixed-seed instances)."""
    rng = np.random.default_rng(0)
    n, steps, k = 4000, 16, 20
    logits = rng.normal(0, 1.5, (n, steps, k))
    p0 = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    x = rng.normal(0, 1, (n, steps, k))
    x -= (p0 * x).sum(-1, keepdims=True)                      # mean 0 under the base
    noise = rng.normal(0, 1, (n, steps, k))
    noise -= (p0 * noise).sum(-1, keepdims=True)
    q_hat = rho * x + math.sqrt(1 - rho ** 2) * noise
    beta = 0.3
    q = p0 * np.exp(beta * q_hat)
    q /= q.sum(-1, keepdims=True)
    gain = float((q * x).sum(-1).sum(-1).mean())
    kl = float((q * np.log(q / p0)).sum(-1).sum(-1).mean())
    sd_w = math.sqrt(float((p0 * x ** 2).sum(-1).sum(-1).mean()))
    assert effective_rho(gain, kl, sd_w) == pytest.approx(rho, abs=0.05)
    # the same law gives the KL for a larger gain: twice the gain at four times the KL
    assert kl_to_reach(2 * gain, gain, kl) == pytest.approx(4 * kl)


def test_effective_rho_and_kl_to_reach_refuse_what_they_cannot_tell():
    assert math.isnan(effective_rho(0.1, 0.0, 1.0))
    assert math.isnan(effective_rho(0.1, 1.0, math.nan))
    assert math.isnan(kl_to_reach(0.2, -0.01, 1.0))
    assert math.isnan(kl_to_reach(0.2, 0.0, 1.0))


@pytest.mark.parametrize("n", [2, 4, 16])
def test_exact_bon_kl_without_ties_approaches_the_bound(n):
    pool = {(0, 0): list(range(20000))}                       # all distinct
    assert exact_bon_kl(pool, n) == pytest.approx(kl_bound(n), abs=2e-3)
    assert exact_bon_kl(pool, n) < kl_bound(n)


def test_exact_bon_kl_counts_ties():
    p, n = 3 / 16, 16
    picked = 1 - (1 - p) ** n
    want = picked * math.log(picked / p) + (1 - picked) * math.log((1 - picked) / (1 - p))
    pools = {(0, 0): [1.0] * 3 + [0.0] * 13, (1, 0): [0.5] * 16}
    assert exact_bon_kl(pools, n) == pytest.approx(want / 2, rel=1e-9)   # a tied pool pays 0
    assert exact_bon_kl(pools, n) < 0.5 * kl_bound(n)
    assert math.isnan(exact_bon_kl({}, 4))


def _record(setting, method, prompt, sample, reward, *, kl=0.0, kl_kind="estimate",
            best_of=None, scores=None, beta=0.0):
    r = {"setting": setting, "method": method, "beta": beta, "weights": {"v": 1.0}
         if method == "vas" else {}, "best_of": best_of, "bon_reward": "r" if best_of else None,
         "prompt_index": prompt, "sample": sample, "rewards": {"r": reward}, "kl": kl,
         "kl_kind": kl_kind, "tokens": 8, "upstream_calls": 1, "calls": [[10, 8, 0, 0]]}
    if scores is not None:
        r.update(bon_scores=scores, bon_pool=len(scores))
    return r


def _eval_records(rng, prompts=64, sd=0.5, gain=0.2, kl=1.0):
    """Base, a VAS row that gains `gain` at `kl`, and Best-of-4 from pools of 4, with prompt
    means far apart (sd 10) so that only a within-prompt sd is right."""
    out = []
    for i in range(prompts):
        mu = rng.normal(0, 10)
        for j in range(2):
            pool = list(mu + rng.normal(0, sd, 4))
            out.append(_record("base", "base", i, j, pool[0]))
            out.append(_record("vas b=2 v=1", "vas", i, j, pool[0] + gain + rng.normal(0, .01),
                               kl=kl, beta=2.0))
            out.append(_record("bon N=4 r", "bon", i, j, max(pool), kl=kl_bound(4),
                               kl_kind="bound", best_of=4, scores=pool))
    return out


def test_within_sd_is_within_prompts_from_pools_or_base_draws():
    rng = np.random.default_rng(1)
    records = _eval_records(rng, prompts=400)
    assert len(bon_pools(records, "r")) == 800 and not bon_pools(records, "other")
    assert within_sd(records, "r") == pytest.approx(0.5, rel=0.05)
    base_only = [r for r in records if r["method"] == "base"]  # two seeds per prompt
    assert within_sd(base_only, "r") == pytest.approx(0.5, rel=0.1)
    assert math.isnan(within_sd(base_only[::2], "r"))         # one response per prompt


def test_summary_rates_each_row_per_nat():
    records = _eval_records(np.random.default_rng(2))
    rows = {r["setting"]: r for r in summarise(records, ["r"])}
    sd = within_sd(records, "r")
    vas = rows["vas b=2 v=1"]
    assert vas["r_rho"] == pytest.approx(vas["r_gain"] / (sd * math.sqrt(2.0)), rel=1e-9)
    assert rows["bon N=4 r"]["kl_exact"] == pytest.approx(kl_bound(4), abs=0.05)
    assert math.isnan(rows["base"]["r_rho"]) and math.isnan(vas["kl_exact"])
    text = "\n".join(per_nat_lines(list(rows.values()), ["r"]))
    assert "r, vas b=2 v=1: ρ" in text and "r, bon N=4 r: ρ" in text
    need = kl_to_reach(rows["bon N=4 r"]["r_gain"], vas["r_gain"], 1.0)
    assert f"reaches Best-of-4's gain at about {need:.1f} nats" in text
    # records without pools (an eval from before they were kept): sd_w from the base's two
    # draws, and no exact KL claimed
    bare = [{k: v for k, v in r.items() if k not in ("bon_scores", "bon_pool")} for r in records]
    rows = summarise(bare, ["r"])
    assert all(math.isnan(r["kl_exact"]) for r in rows)
    text = "\n".join(per_nat_lines(rows, ["r"]))
    assert "r, bon N=4 r: ρ" in text and "nan" not in text
    # Best-of-N over VAS samples is rated at its KL bound, which varies per response
    hybrid = [dict(r, setting="gbon N=2 b=2 v=1 r", method="gbon", best_of=2, bon_reward="r",
                   kl=kl_bound(2) + 1.0 + 0.1 * r["prompt_index"] % 2, kl_kind="bound",
                   rewards={"r": r["rewards"]["r"] + 0.1})
              for r in records if r["method"] == "vas"]
    rows = {r["setting"]: r for r in summarise(records + hybrid, ["r"])}
    g = rows["gbon N=2 b=2 v=1 r"]
    assert g["kl_kind"] == "bound" and g["kl_se"] > 0
    assert g["r_rho"] == pytest.approx(g["r_gain"] / (sd * math.sqrt(2 * g["kl_mean"])))
    text = "\n".join(per_nat_lines(list(rows.values()), ["r"]))
    assert f"r, gbon N=2 b=2 v=1 r: ρ {g['r_rho']:.2f} at its bound {g['kl_mean']:.2f}" in text
    # a guided row that does not raise the reward is not rated
    flat = [dict(r, rewards={"r": r["rewards"]["r"] - 0.2}) if r["method"] == "vas" else r
            for r in records]
    assert per_nat_lines(summarise(flat, ["r"]), ["r"]) == []


def test_one_mean_and_standard_error_serves_the_report_and_onestep():
    from vas_proxy.eval import report
    from vas_proxy.stats import mean_se
    from vas_proxy.train import onestep

    assert report.mean_se is mean_se and onestep.mean_se is mean_se
    m, se = mean_se([1.0, None, 2.0, 3.0])  # None: a record without the figure
    assert m == 2.0 and math.isclose(se, 1 / math.sqrt(3))
    assert math.isnan(mean_se([5.0])[1]) and mean_se([5.0])[0] == 5.0  # one value: no spread
    assert all(math.isnan(x) for x in mean_se([]))
