"""llama-cpp-python's legacy logprobs print its end token and every piece of a UTF-8 character
as "" (they collide). The loop asks the upstream what a chosen "" stands for
(`ChunkSource._resolve_empty`), so an emoji is reachable there too and an answer ends only on
the real end token. Real upstream: llama-cpp-python's server on SmolLM2, fixed seeds."""

from __future__ import annotations

import asyncio

import numpy as np
from scipy import stats

from vas_proxy.engine import Engine, GenerationRequest
from vas_proxy.guidance import Guidance
from vas_proxy.sampling import target_probs
from vas_proxy.upstream.client import UpstreamClient

EMOJI = "Reply with just one emoji."  # "" holds ~20 % of the first position's top-20 mass
N = 60


def test_a_chosen_empty_is_told_apart_and_emojis_are_reachable(upstream, chat_prompt,
                                                               chat_template):
    """beta 0, one token, seeds 0..59: "" is chosen at its target rate (binomial, p > 1e-3);
    each one is resolved, none by giving up; a resolved piece is the whole first character
    (non-ASCII, never U+FFFD), which the old rule (end on "") made impossible."""
    prompt = chat_prompt(EMOJI)

    async def go():
        async with UpstreamClient(upstream.base_url, upstream.model, profile=upstream.profile,
                                  use_cache=False) as c:
            first = (await c.complete(prompt, max_tokens=1, top_k=20, seed=0)).positions[0]
            eng = Engine(c, {}, defaults=Guidance(beta=0.0, speculate=0),
                         eos_texts=chat_template.stop_strings)
            gens = [await eng.generate(GenerationRequest(prompt=prompt, max_tokens=1, seed=s))
                    for s in range(N)]
            return first.candidates, gens

    cands, gens = asyncio.run(go())
    q = target_probs([c.logprob for c in cands])
    q_empty = float(sum(p for c, p in zip(cands, q) if c.ambiguous_empty))
    assert q_empty > 0.05, "the prompt no longer puts mass on the legacy \"\""
    chose = [g for g in gens if g.usage.ambiguous_resolved or g.usage.ambiguous_ends]
    assert stats.binomtest(len(chose), N, q_empty).pvalue > 1e-3
    assert sum(g.usage.ambiguous_ends for g in gens) == 0  # never given up
    pieces = [g for g in chose if g.text]
    assert pieces, f"no \"\" of {len(chose)} resolved to a character"
    for g in pieces:
        assert len(g.text) == 1 and ord(g.text) > 127 and g.text != "\ufffd", g.text
        assert g.finish_reason == "length" and g.usage.upstream_calls >= 2
    for g in gens:
        if not g.text:  # only the real end token ends an answer empty
            assert g.finish_reason == "stop" and g.usage.ambiguous_resolved == 1
    others = [g for g in gens if not (g.usage.ambiguous_resolved or g.usage.ambiguous_ends)]
    assert all(g.text and g.usage.upstream_calls == 1 for g in others)
    assert np.isfinite([ev.logprob for g in gens for ev in g.tokens]).all()
