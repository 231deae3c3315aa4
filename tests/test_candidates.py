"""The one-step candidate check: its math by hand, and its sample from the real llama-server."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from vas_proxy.protocol import Candidate
from vas_proxy.rewards import load_reward
from vas_proxy.sampling import target_probs
from vas_proxy.train.candidates import (
    STATES_FILE,
    CandidateState,
    pick_state,
    sample_states,
    score_states,
)
from vas_proxy.train.onestep import noise_ceiling, oracle_at_kl, predict, step_terms
from vas_proxy.train.prompts import render_prompts
from vas_proxy.train.rollouts import JsonlStore
from vas_proxy.upstream.client import UpstreamClient


def test_step_terms_by_hand():
    lp = np.log([0.5, 0.3, 0.2])
    v = [1.0, 0.0, 0.0]
    gain, kl_all, kl_done = step_terms(lp, v, [1.0, 0.0], beta=2.0)
    # over the two completed candidates: p = (5/8, 3/8), q ∝ p · exp(2 · (v − mean))
    p2 = np.array([5 / 8, 3 / 8])
    q2 = p2 * np.exp([1.0, -1.0])
    q2 /= q2.sum()
    assert gain == pytest.approx(q2[0] - p2[0])
    assert kl_done == pytest.approx(float(np.sum(q2 * np.log(q2 / p2))))
    q3 = target_probs(lp, np.array(v) - 1 / 3, 2.0)
    assert kl_all == pytest.approx(float(np.sum(q3 * np.log(q3 / np.array([0.5, 0.3, 0.2])))))
    assert step_terms(lp, v, [1.0, 0.0], beta=0.0) == pytest.approx((0.0, 0.0, 0.0))


def _state(i: int, q: list[float], n: int = 10, noise: float = 0.0, seed: int = 0):
    rng = np.random.default_rng([seed, i])
    rewards = [[x + noise * rng.standard_normal() for _ in range(4)] for x in q]
    return CandidateState(i, 0, i, 16, "p", "p", n, 3, "x", [f"c{a}" for a in range(len(q))],
                          list(np.log(np.full(len(q), 1 / len(q)))), [False] * len(q),
                          [["" for _ in range(4)] for _ in q], {"r": rewards})


def test_a_right_ranking_gains_a_reversed_one_loses_and_a_flat_one_does_nothing():
    states = [_state(i, list(np.random.default_rng(i).normal(size=4))) for i in range(20)]
    truth = [[float(np.mean(r)) for r in s.rewards["r"]] for s in states]
    right = predict(states, truth, "r", [1.0])
    wrong = predict(states, [[-x for x in t] for t in truth], "r", [1.0])
    flat = predict(states, [[0.0] * 4 for _ in states], "r", [1.0])
    assert right["candidates_within_corr"] == pytest.approx(1.0)
    assert right["betas"]["1"]["gain"] > 0 > wrong["betas"]["1"]["gain"]
    assert right["betas"]["1"]["kl"] > 0 and wrong["betas"]["1"]["kl"] > 0
    assert flat["betas"]["1"]["gain"] == 0 and flat["betas"]["1"]["kl"] == 0
    # n tokens per response scale the per-state terms into response totals
    longer = predict([_state(i, truth[i], n=20) for i in range(20)], truth, "r", [1.0])
    assert longer["betas"]["1"]["gain"] == pytest.approx(2 * right["betas"]["1"]["gain"])


def test_the_oracle_is_cross_fitted_so_pure_noise_buys_nothing():
    """Candidates of equal true value, completions that differ only by noise: an oracle that
    picked and scored on the same completions would 'gain'; the cross-fitted one does not."""
    states = [_state(i, [0.0] * 4, noise=1.0, seed=7) for i in range(400)]
    row = oracle_at_kl(states, "r", 2.0, sd=1.0)
    assert row["oracle_kl"] == pytest.approx(2.0, rel=1e-3)  # it does tilt, to the budget
    assert abs(row["oracle_gain"]) < 3 * row["oracle_gain_se"] + 1e-9
    signal = [_state(i, [1.0, 0.0, 0.0, 0.0], noise=1.0, seed=7) for i in range(400)]
    row = oracle_at_kl(signal, "r", 2.0, sd=1.0)
    assert row["oracle_gain"] > 5 * row["oracle_gain_se"]
    # predict() puts the oracle at the KL the model pays over the completed candidates
    truth = [[1.0, 0.0, 0.0, 0.0]] * 400
    pred = predict(signal, truth, "r", [2.0])["betas"]["2"]
    assert pred["oracle_kl"] == pytest.approx(pred["kl_completed"], rel=1e-3)
    assert predict(signal, [[0.0] * 4] * 400, "r", [2.0])["betas"]["2"]["oracle_gain"] == 0


def test_the_noise_ceiling_tells_signal_from_noise():
    rng = np.random.default_rng(3)
    noise = [_state(i, [0.0] * 4, noise=1.0, seed=1) for i in range(300)]
    signal = [_state(i, list(rng.normal(size=4)), noise=0.3, seed=1) for i in range(300)]
    pure, clear = noise_ceiling(noise, "r"), noise_ceiling(signal, "r")
    assert abs(pure["split_half"]) < 0.1 and pure["ceiling"] < 0.35
    # within a state Q varies by 3/4 (4 draws of sd 1, mean removed); a half's mean of 2
    # completions adds noise of variance 0.09 / 2: r = 0.75 / (0.75 + 0.045) ~ 0.94
    assert clear["split_half"] == pytest.approx(0.75 / (0.75 + 0.045), abs=0.03)
    assert clear["ceiling"] > 0.97
    assert predict(signal, [[0.0] * 4] * 300, "r", [1.0])["noise"] == clear


def test_a_cut_never_splits_a_character():
    e = "é".encode()  # two bytes, reported as two tokens
    toks = [Candidate("a", 0.0), Candidate("", 0.0, raw=e[:1]), Candidate("", 0.0, raw=e[1:]),
            Candidate("b", 0.0), Candidate("c", 0.0)]
    seen = set()
    for seed in range(40):
        t, prefix = pick_state(toks, np.random.default_rng(seed))
        assert t != 2 and prefix == b"".join(c.bytes for c in toks[:t]).decode()
        seen.add(t)
    assert seen == {0, 1, 3}
    assert pick_state(toks[:1], np.random.default_rng(0)) is None


class _Counting:
    def __init__(self, client):
        self.client, self.model, self.calls = client, client.model, 0

    async def complete(self, *args, **kwargs):
        self.calls += 1
        return await self.client.complete(*args, **kwargs)


def test_states_from_llama_server_are_seeded_complete_and_resumable(llama_server, chat_template,
                                                                    tmp_path):
    prompts = render_prompts([{"messages": [{"role": "user", "content": text}]}
                              for text in ("Name three fruits.", "Describe a sunny day.")],
                             chat_template)
    settings = {"draws": 1, "k": 5, "complete": 2, "m": 2, "max_tokens": 12, "seed": 3,
                "stop": chat_template.stop_strings, "concurrency": 2, "progress": False}

    async def run(path):
        client = UpstreamClient(llama_server.base_url, "m", profile=llama_server.profile,
                                use_cache=False)
        counting = _Counting(client)
        try:
            states = await sample_states(counting, prompts,
                                         store=JsonlStore(path, CandidateState), **settings)
        finally:
            await client.aclose()
        return states, counting.calls

    first, calls = asyncio.run(run(tmp_path / STATES_FILE))
    assert len(first) == 2 and calls >= 2
    for s in first:
        assert 0 <= s.t <= s.n_tokens - 2 and 2 <= len(s.texts) <= 5
        assert s.logprobs == sorted(s.logprobs, reverse=True)
        assert len(s.completions) == 2 and all(len(c) == 2 for c in s.completions)
    again, calls = asyncio.run(run(tmp_path / STATES_FILE))
    assert calls == 0 and [a.__dict__ for a in again] == [b.__dict__ for b in first]
    fresh, _ = asyncio.run(run(tmp_path / "other.jsonl"))
    assert [a.__dict__ for a in fresh] == [b.__dict__ for b in first]  # seeded

    score_states(first, load_reward("concise"), "concise",
                 JsonlStore(tmp_path / STATES_FILE, CandidateState))
    stored = JsonlStore(tmp_path / STATES_FILE, CandidateState).load()
    for s in first:
        assert stored[s.key].rewards["concise"] == s.rewards["concise"]
        assert all(math.isfinite(x) for per in s.rewards["concise"] for x in per)
        for a, per in enumerate(s.responses()):
            want = s.prefix if s.terminal[a] else s.prefix + s.texts[a]
            assert all(r.startswith(want) for r in per)
