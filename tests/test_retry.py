"""Retries against a fake upstream (httpx MockTransport: a real server cannot fail on demand) and
against a port nobody listens on. Waits are made tiny through the policy."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate

import httpx2 as httpx
import pytest

from vas_proxy.errors import (ContextLengthError, UpstreamError, UpstreamHTTPError,
                              UpstreamTimeout, UpstreamUnreachable)
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.upstream.local import free_port
from vas_proxy.upstream.retry import RetryPolicy, retryable

FAST = RetryPolicy(max_attempts=4, initial_wait=0.01, max_wait=0.02, total_wait=5.0)
OK = {"choices": [{"text": "a", "finish_reason": "length", "logprobs": {
    "tokens": ["a"], "token_logprobs": [-0.5],
    "top_logprobs": [{"a": -0.5, "b": -1.5, "c": -2.0}]}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1}}


class Script:
    """Answers the scripted responses in order (then the last one forever); counts calls."""

    def __init__(self, *steps):
        self.steps, self.times = list(steps), []

    def __call__(self, request):
        self.times.append(time.monotonic())
        step = self.steps[min(len(self.times), len(self.steps)) - 1]
        if isinstance(step, Exception):
            raise step
        status, headers, body = step
        return httpx.Response(status, headers=headers, json=body)

    @property
    def calls(self):
        return len(self.times)


def err(status, message="nope", code=None, headers=None, type_=None):
    return status, headers or {}, {"error": {"message": message, "code": code, "type": type_}}


def ok():
    return 200, {}, OK


def run(script, policy=FAST, **kw):
    client = UpstreamClient("http://fake/v1", "m", use_cache=False, retry=policy,
                            transport=httpx.MockTransport(script))

    async def go():
        try:
            return await client.complete("hi", max_tokens=1, top_k=3, **kw)
        finally:
            await client.aclose()
    t0 = time.monotonic()
    try:
        return asyncio.run(go())
    finally:
        script.elapsed = time.monotonic() - t0


@pytest.mark.parametrize("headers,wait", [({"retry-after": "0.3"}, 0.3),
                                          ({"retry-after-ms": "250"}, 0.25)])
def test_429_honours_retry_after(headers, wait):
    s = Script(err(429, "slow down", headers=headers), ok())
    res = run(s)
    assert s.calls == 2 and res.positions[0].candidates[0].text == "a"
    gap = s.times[1] - s.times[0]
    # the backoff alone would wait at most 0.02 s: the gap comes from the header
    assert wait - 0.02 <= gap < wait + 0.5


def test_retry_after_http_date():
    s = Script(err(503, headers={"retry-after": formatdate(time.time() + 1.2, usegmt=True)}), ok())
    run(s)
    assert s.calls == 2 and 0.15 <= s.times[1] - s.times[0] < 2.0  # whole seconds: 0.2–1.2 s


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses_then_success(status):
    s = Script(err(status), err(status), ok())
    res = run(s)
    assert s.calls == 3 and res.completion_tokens == 1


@pytest.mark.parametrize("exc,typed", [(httpx.ReadTimeout("slow"), UpstreamTimeout),
                                       (httpx.ConnectError("refused"), UpstreamUnreachable)])
def test_timeouts_and_connection_errors_are_retried(exc, typed):
    assert retryable(typed("x"))
    s = Script(exc, ok())
    res = run(s)
    assert s.calls == 2 and res.text == "a"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(status):
    s = Script(err(status, "bad request"), ok())
    with pytest.raises(UpstreamHTTPError) as e:
        run(s)
    assert s.calls == 1 and e.value.status == status and "attempt" not in str(e.value)


def test_context_length_is_not_retried():
    s = Script(err(400, "This model's maximum context length is 2048 tokens"), ok())
    with pytest.raises(ContextLengthError):
        run(s)
    assert s.calls == 1


@pytest.mark.parametrize("body", [dict(code="insufficient_quota"),
                                  dict(type_="insufficient_quota")])
def test_insufficient_quota_is_not_retried(body):
    s = Script(err(429, "You exceeded your current quota", **body), ok())
    with pytest.raises(UpstreamHTTPError) as e:
        run(s)
    assert s.calls == 1 and e.value.error_code == "insufficient_quota"


def test_a_400_after_retries_stops_at_once():
    s = Script(err(503), err(400), ok())
    with pytest.raises(UpstreamHTTPError) as e:
        run(s)
    assert s.calls == 2 and e.value.status == 400


def test_gives_up_after_max_attempts_with_one_clear_line():
    s = Script(err(503, "overloaded"))
    with pytest.raises(UpstreamHTTPError) as e:
        run(s)
    msg = str(e.value)
    assert s.calls == FAST.max_attempts and e.value.status == 503
    assert "overloaded" in msg and f"gave up after {FAST.max_attempts} attempts" in msg
    assert "\n" not in msg and e.value.message == msg


def test_total_wait_cap_bounds_the_time_spent():
    policy = RetryPolicy(max_attempts=1000, initial_wait=0.05, max_wait=0.05, total_wait=0.3,
                         jitter=0.0)
    s = Script(httpx.ConnectError("refused"))
    with pytest.raises(UpstreamUnreachable, match=r"gave up after \d+ attempts"):
        run(s, policy)
    assert 0.3 <= s.elapsed < 0.3 + 1.0
    assert 5 <= s.calls <= 8  # 0.3 s of 0.05 s waits: 6 waits, 7 attempts


def test_retry_after_beyond_the_budget_fails_fast():
    s = Script(err(429, "slow down", headers={"retry-after": "120"}), ok())
    with pytest.raises(UpstreamHTTPError, match="retry after 120s, beyond the 5s retry budget"):
        run(s)
    assert s.calls == 1 and s.elapsed < 1.0


def test_none_policy_makes_one_attempt():
    s = Script(err(503), ok())
    with pytest.raises(UpstreamHTTPError) as e:
        run(s, RetryPolicy.none())
    assert s.calls == 1 and "attempt" not in str(e.value)


def test_backoff_grows_is_capped_and_jittered():
    p = RetryPolicy(initial_wait=1.0, max_wait=4.0, jitter=0.25)
    for retry, base in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)]:
        waits = [p.backoff(retry) for _ in range(200)]
        assert all(0.75 * base <= w <= base for w in waits)
        assert max(waits) - min(waits) > 0.05 * base  # jitter is there
    assert RetryPolicy(jitter=0.0).backoff(2) == 1.0
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_upstream_down_real_socket():
    """Nobody listens on the port: the user gets one line after N attempts, within the cap."""
    policy = RetryPolicy(max_attempts=3, initial_wait=0.05, max_wait=0.1, total_wait=2.0)
    client = UpstreamClient(f"http://127.0.0.1:{free_port()}/v1", "m", use_cache=False,
                            retry=policy, timeout=2.0)

    async def go():
        try:
            await client.complete("hi", max_tokens=1, top_k=3)
        finally:
            await client.aclose()
    t0 = time.monotonic()
    with pytest.raises(UpstreamUnreachable) as e:
        asyncio.run(go())
    assert time.monotonic() - t0 < policy.total_wait + 1.0
    msg = str(e.value)
    assert msg.startswith("cannot reach upstream http://127.0.0.1:")
    assert "gave up after 3 attempts" in msg and "\n" not in msg


def test_models_is_retried_too():
    calls = []

    def handler(req):
        calls.append(req.url.path)
        if len(calls) == 1:
            return httpx.Response(502, json={"error": {"message": "bad gateway"}})
        return httpx.Response(200, json={"data": [{"id": "smol"}]})
    client = UpstreamClient("http://fake/v1", "m", use_cache=False, retry=FAST,
                            transport=httpx.MockTransport(handler))

    async def go():
        try:
            return await client.models()
        finally:
            await client.aclose()
    assert asyncio.run(go()) == ["smol"] and calls == ["/v1/models"] * 2


def test_invalid_json_is_a_typed_error_not_retried():
    calls = []

    def handler(req):
        calls.append(1)
        return httpx.Response(200, text="<html>oops</html>")
    with pytest.raises(UpstreamError, match="invalid JSON"):
        run(handler)
    assert len(calls) == 1
