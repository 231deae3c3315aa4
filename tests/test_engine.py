"""The guided loop against the real upstream (llama-cpp-python on SmolLM2)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from scipy import stats

from vas_proxy.engine import Engine, GenerationRequest

from vas_proxy.guidance import Guidance
from vas_proxy.errors import ConfigError, ContextLengthError, UpstreamUnreachable
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.values.loader import load_value

from valuefns import char_hash, char_prob

ALPHA = 1e-3  # significance level of the exactness tests


def run(coro):
    return asyncio.run(coro)


def make_engine(upstream, values=None, **guidance):
    client = UpstreamClient(upstream.base_url, upstream.model)
    vals = {name: load_value(spec, name=name) for name, spec in (values or {}).items()}
    return Engine(client, vals, defaults=Guidance(**guidance), eos_texts=["<|im_end|>"])


def gen(engine, prompt, **kw):
    g = engine.resolve(kw.pop("vas", None))
    async def go():
        try:
            return await engine.generate(GenerationRequest(prompt=prompt, guidance=g, **kw))
        finally:
            await engine.upstream.aclose()
    return run(go())


def test_same_seed_same_text(upstream, chat_prompt):
    p = chat_prompt("Name a fruit.")
    vals = {"h": "py:valuefns:char_hash"}
    a = gen(make_engine(upstream, vals, beta=1.0), p, max_tokens=12, seed=7)
    b = gen(make_engine(upstream, vals, beta=1.0), p, max_tokens=12, seed=7)
    others = {gen(make_engine(upstream, vals, beta=1.0), p, max_tokens=12, seed=s).text
              for s in (8, 9, 10)}
    assert a.text == b.text and a.text
    assert len(others | {a.text}) > 1  # the seed matters
    assert [t.token for t in a.tokens] == [t.token for t in b.tokens]
    assert len(a.tokens) <= 12
    assert a.usage.completion_tokens == len(a.tokens)
    # the llamacpp profile's default is adaptive speculation: its drafts are exact samples
    assert a.usage.draft_trials > 0 and 1 <= a.usage.upstream_calls
    assert a.usage.upstream_prompt_tokens > 0


def test_beta_zero_trace_is_the_upstream_topk(upstream, chat_prompt):
    eng = make_engine(upstream, {"h": "py:valuefns:char_hash"}, beta=0.0, top_k=20, trace=True)
    out = gen(eng, chat_prompt("Say hello."), max_tokens=3, seed=1)
    assert out.trace
    for entry in out.trace:
        lps = np.array([c["logprob"] for c in entry["candidates"]])
        assert len(lps) == 20 and np.all(np.diff(lps) <= 0)
        np.testing.assert_allclose([c["prob"] for c in entry["candidates"]],
                                   np.exp(lps) / np.exp(lps).sum(), rtol=1e-9)
        assert entry["chosen"] in [c["token"] for c in entry["candidates"]]
    assert out.kl == pytest.approx(0.0, abs=1e-9)


def test_stop_string_and_length(upstream, chat_prompt):
    p = chat_prompt("Count from 1 to 20, separated by commas.")
    long = gen(make_engine(upstream, beta=0.0), p, max_tokens=16, temperature=0.0)
    assert long.finish_reason == "length" and len(long.tokens) == 16
    assert "3" in long.text
    cut = gen(make_engine(upstream, beta=0.0), p, max_tokens=16, temperature=0.0, stop=["3"])
    assert cut.finish_reason == "stop"
    assert "3" not in cut.text and long.text.startswith(cut.text)


def test_eos_ends_the_answer(upstream, chat_prompt):
    # After a complete short answer, greedy decoding ends the turn with <|im_end|>.
    out = gen(make_engine(upstream, beta=0.0), chat_prompt("Reply with just the word: yes"),
              max_tokens=40, temperature=0.0)
    assert out.finish_reason == "stop"
    assert "<|im_end|>" not in out.text and len(out.tokens) < 40


def test_unknown_weight_name_is_a_config_error(upstream):
    eng = make_engine(upstream, {"h": "py:valuefns:char_hash"})
    with pytest.raises(ConfigError, match="loaded: h"):
        eng.resolve({"weights": {"nope": 1.0}})
    with pytest.raises(ConfigError, match="beta"):
        eng.resolve({"beta": "high"})
    run(eng.upstream.aclose())


def test_prompt_longer_than_context(upstream):
    with pytest.raises(ContextLengthError):
        gen(make_engine(upstream, beta=0.0), "hello " * 5000, max_tokens=1)


def test_unreachable_upstream():
    from vas_proxy.upstream.local import free_port
    eng = Engine(UpstreamClient(f"http://127.0.0.1:{free_port()}/v1", "m"), {})
    with pytest.raises(UpstreamUnreachable, match="cannot reach"):
        gen(eng, "hi", max_tokens=1)


def _first_token_counts(upstream, prompt, n, beta, spec="py:valuefns:char_hash"):
    """n one-token guided generations over seeds 0..n-1, one engine, one event loop."""
    eng = make_engine(upstream, {"h": spec}, beta=beta)

    async def go():
        g = eng.resolve(None)
        try:
            outs = []
            for s in range(n):
                r = await eng.generate(GenerationRequest(prompt=prompt, max_tokens=1, seed=s,
                                                         guidance=g))
                outs.append(r.tokens[0].token)
            ref = await eng.upstream.complete(prompt, max_tokens=1, top_k=20)
            return outs, ref.positions[0].candidates
        finally:
            await eng.upstream.aclose()
    return run(go())


def _pvalue(samples, cands, probs):
    """Chi-square of sampled tokens vs probs over candidates; bins with expected < 5 pooled."""
    idx = {c.bytes: i for i, c in enumerate(cands)}
    assert all(s in idx for s in samples), "sampled a token outside the top-k"
    counts = np.bincount([idx[s] for s in samples], minlength=len(cands)).astype(float)
    exp = probs * len(samples)
    big = exp >= 5
    obs = np.append(counts[big], counts[~big].sum())
    ex = np.append(exp[big], exp[~big].sum())
    if ex[-1] == 0:
        obs, ex = obs[:-1], ex[:-1]
    return stats.chisquare(obs, ex).pvalue


def test_guided_first_token_is_exact(upstream, chat_prompt):
    """300 first tokens over seeds follow the docs/design.md §1 target, computed here independently
    from the upstream's logprobs and the value function; a wrong target is rejected. (Measured
    on these seeds: the base is rejected at p 4e-25 with 300, 2e-58 with 600; the target kept at
    0.76 and 0.93: 300 keep the power at half the time.)"""
    prompt = chat_prompt("Give me one word that describes the sea.")
    beta = 1.0
    samples, cands = _first_token_counts(upstream, prompt, 300, beta)
    lp = np.array([c.logprob for c in cands])
    v = np.array(char_hash(prompt, [c.bytes.decode("utf-8", "ignore") for c in cands]))
    q = np.exp(lp + beta * (v - v.mean()))
    q /= q.sum()
    assert _pvalue(samples, cands, q) > ALPHA
    # Power: the untilted base distribution and a sign-flipped tilt are both rejected.
    base = np.exp(lp) / np.exp(lp).sum()
    flipped = np.exp(lp - beta * v)
    flipped /= flipped.sum()
    assert _pvalue(samples, cands, base) < ALPHA
    assert _pvalue(samples, cands, flipped) < ALPHA


def test_binary_value_first_token_follows_the_soft_target(upstream, chat_prompt):
    """A `binary:` value (P of a 0/1 reward): 200 first tokens follow p·(1 + (e^β − 1)·P),
    computed here from the upstream's logprobs; VAS's linear tilt p·exp(β·P) is rejected."""
    prompt = chat_prompt("Give me one word that describes the sea.")
    beta = 4.0
    samples, cands = _first_token_counts(upstream, prompt, 200, beta,
                                         "binary:py:valuefns:char_prob")
    p = np.exp([c.logprob for c in cands])
    prob = np.array(char_prob(prompt, [c.bytes.decode("utf-8", "ignore") for c in cands]))
    soft = p * (1 + np.expm1(beta) * prob)
    linear = p * np.exp(beta * prob)
    assert _pvalue(samples, cands, soft / soft.sum()) > ALPHA
    assert _pvalue(samples, cands, linear / linear.sum()) < ALPHA


def test_streamed_drafts_equal_whole_calls_on_the_real_upstream(upstream, chat_prompt):
    """llama-cpp-python streams the very positions its whole answers report (same seed, same
    logprobs), so reading drafted calls as streams changes neither the text nor the
    acceptance decisions; its streams carry no usage, so their prompts are estimated, and
    the estimate matches the counts of the whole calls."""
    p = chat_prompt("Tell me about your weekend.")
    value = load_value("py:valuefns:char_hash", name="h")

    def one(overlap: bool, seed: int):
        client = UpstreamClient(upstream.base_url, upstream.model, use_cache=False)
        eng = Engine(client, {"h": value}, defaults=Guidance(beta=1.0, speculate=4),
                     eos_texts=["<|im_end|>"], overlap=overlap)
        return gen(eng, p, max_tokens=16, seed=seed)

    for seed in (3, 4):
        whole, live = one(False, seed), one(True, seed)
        assert live.text == whole.text and live.text
        assert (live.usage.draft_trials, live.usage.drafts_accepted) == \
            (whole.usage.draft_trials, whole.usage.drafts_accepted)
        assert live.usage.upstream_calls == whole.usage.upstream_calls
        assert live.usage.upstream_completion_tokens >= live.usage.completion_tokens
        if live.usage.upstream_calls > 1:
            assert live.usage.estimated_prompt_tokens > 0
        assert abs(live.usage.upstream_prompt_tokens - whole.usage.upstream_prompt_tokens) \
            <= live.usage.upstream_calls  # a re-tokenised boundary may differ by a token
