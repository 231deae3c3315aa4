"""Upstream client: both logprob shapes and the typed errors. A fake upstream (httpx
MockTransport) stands in only for answers a real server cannot give on demand."""

from __future__ import annotations

import asyncio
import json

import httpx2 as httpx
import pytest

from vas_proxy.errors import (ContextLengthError, NoLogprobsError, TooFewCandidatesError,
                              UnsupportedProviderError, UpstreamHTTPError)
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.upstream.profiles import get_profile
from vas_proxy.upstream.retry import RetryPolicy


def fake(handler):
    return UpstreamClient("http://fake/v1", "m", api_key="sk-secret-123", use_cache=False,
                          retry=RetryPolicy.none(), transport=httpx.MockTransport(handler))


def call(client, **kw):
    async def go():
        try:
            return await client.complete("hi", **{"max_tokens": 1, "top_k": 3, **kw})
        finally:
            await client.aclose()
    return asyncio.run(go())


def legacy(tops, tokens=None):
    tokens = tokens or [max(t, key=t.get) for t in tops]
    return {"choices": [{"text": "".join(tokens), "finish_reason": "length", "logprobs": {
        "tokens": tokens, "token_logprobs": [t[x] for t, x in zip(tops, tokens)],
        "top_logprobs": tops}}], "usage": {"prompt_tokens": 5, "completion_tokens": len(tokens)}}


def test_legacy_shape_sorted_cut_and_sampled_extra_dropped():
    seen = {}

    def handler(req):
        seen.update(json.loads(req.content))
        seen["auth"] = req.headers["authorization"]
        return httpx.Response(200, json=legacy(
            [{"b": -1.5, "a": -0.5, "c": -2.0, "rare": -9.0}], tokens=["rare"]))

    res = call(fake(handler))
    pos = res.positions[0]
    assert [c.text for c in pos.candidates] == ["a", "b", "c"]
    assert pos.sampled.text == "rare"
    assert res.prompt_tokens == 5 and res.completion_tokens == 1
    # llamacpp profile: neutral sampler so the upstream's samples follow its logprobs
    assert seen["logprobs"] == 3 and seen["top_k"] == 0 and seen["min_p"] == 0.0
    assert seen["repeat_penalty"] == 1.0 and seen["auth"] == "Bearer sk-secret-123"


def test_chat_shape_keeps_bytes_and_drops_outside_markers():
    body = {"choices": [{"finish_reason": "length", "logprobs": {"content": [
        {"token": "\\xe2", "logprob": -0.1, "bytes": [226],
         "top_logprobs": [{"token": "\\xe2", "logprob": -0.1, "bytes": [226]},
                          {"token": "x", "logprob": -3.0, "bytes": [120]},
                          {"token": "y", "logprob": -4.0, "bytes": [121]},
                          {"token": "z", "logprob": -9999.0, "bytes": [122]}]}]}}]}
    res = call(fake(lambda r: httpx.Response(200, json=body)))
    cands = res.positions[0].candidates
    assert [c.bytes for c in cands] == [b"\xe2", b"x", b"y"]


def test_no_logprobs_is_a_typed_error():
    body = {"choices": [{"text": "x", "finish_reason": "length", "logprobs": None}]}
    with pytest.raises(NoLogprobsError, match="without logprobs"):
        call(fake(lambda r: httpx.Response(200, json=body)))


def test_too_few_candidates():
    body = {"choices": [{"finish_reason": "length", "logprobs": {"content": [
        {"token": "a", "logprob": -0.1, "bytes": [97],
         "top_logprobs": [{"token": "a", "logprob": -0.1, "bytes": [97]}]}]}}]}
    with pytest.raises(TooFewCandidatesError, match="1 logprob candidates where 3"):
        call(fake(lambda r: httpx.Response(200, json=body)))


def test_http_errors_keep_status_and_never_the_key():
    def handler(req):
        return httpx.Response(401, json={"error": {"message": "bad key", "code": "invalid_api_key"}})
    with pytest.raises(UpstreamHTTPError) as e:
        call(fake(handler))
    assert e.value.status == 401 and "sk-secret-123" not in str(e.value)
    ctx = {"error": {"message": "This model's maximum context length is 2048 tokens"}}
    with pytest.raises(ContextLengthError):
        call(fake(lambda r: httpx.Response(400, json=ctx)))
    with pytest.raises(UpstreamHTTPError) as e:
        call(fake(lambda r: httpx.Response(429, headers={"retry-after-ms": "1500"},
                                            json={"error": {"message": "slow down"}})))
    assert e.value.retry_after == 1.5


def test_profiles():
    with pytest.raises(UnsupportedProviderError, match="400"):
        UpstreamClient("http://x/v1", "m", profile="groq")
    with pytest.raises(UnsupportedProviderError, match="at most 5"):
        get_profile("openai-completions").clamp_top_k(20)
    with pytest.raises(UnsupportedProviderError, match="known:"):
        get_profile("nope")


def test_real_upstream_shape(upstream):
    client = UpstreamClient(upstream.base_url, upstream.model)
    res = call(client, top_k=20, max_tokens=3, seed=3)
    assert 1 <= len(res.positions) <= 3
    for pos in res.positions:
        lps = [c.logprob for c in pos.candidates]
        assert len(lps) >= 10 and lps == sorted(lps, reverse=True)


def test_top_k_zero_asks_for_text_only(upstream):
    """top_k=0 sends no `logprobs` (llama-cpp-python then skips its per-token vocabulary sort)
    and returns the same sample as a call with logprobs: the seed alone decides the text."""
    seen = []

    class Recording(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request):
            seen.append(json.loads(request.content))
            return await super().handle_async_request(request)

    async def go():
        async with UpstreamClient(upstream.base_url, upstream.model, use_cache=False,
                                  transport=Recording()) as c:
            text_only = await c.complete("Once upon a time", max_tokens=6, top_k=0, seed=5)
            with_lps = await c.complete("Once upon a time", max_tokens=6, top_k=2, seed=5)
            return text_only, with_lps

    text_only, with_lps = asyncio.run(go())
    assert "logprobs" not in seen[0] and seen[1]["logprobs"] == 2
    assert text_only.positions == [] and with_lps.positions
    assert text_only.text == with_lps.text != ""
    assert text_only.completion_tokens == with_lps.completion_tokens
