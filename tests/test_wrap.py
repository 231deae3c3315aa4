"""`vas_proxy.wrap(client)`: the real openai SDK, sync and async, against the real upstream."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import numpy as np
import openai
import pytest

import vas_proxy
from vas_proxy.assets import smollm2_gguf
from vas_proxy.rewards import load_reward

VALUES = {"h": "py:valuefns:char_hash"}


@pytest.fixture(scope="module")
def guided(upstream):
    client = openai.OpenAI(base_url=upstream.base_url, api_key="sk-upstream", max_retries=0)
    g = vas_proxy.wrap(client, values=VALUES, beta=1.0, chat_template=str(smollm2_gguf()))
    yield client, g
    g.close()


def test_same_type_guided_and_seeded(guided, upstream):
    client, g = guided
    assert type(g) is openai.OpenAI and g.base_url == client.base_url
    kw = dict(model=upstream.model, prompt="My favourite food is", max_tokens=8, seed=4)
    a, b = g.completions.create(**kw), g.completions.create(**kw)
    assert a.choices[0].text == b.choices[0].text and a.choices[0].text
    vas = a.usage.model_extra["vas"]
    assert vas["upstream_calls"] >= 1
    assert vas["upstream_completion_tokens"] >= a.usage.completion_tokens
    plain = client.completions.create(**kw)  # the original client is untouched
    assert "vas" not in (plain.usage.model_extra or {})


def test_chat_stream_raw_response_and_options(guided, upstream):
    _, g = guided
    msgs = [{"role": "user", "content": "Say something kind."}]
    kw = dict(model=upstream.model, messages=msgs, max_tokens=10, seed=2)
    full = g.chat.completions.create(**kw)
    text = "".join(c.choices[0].delta.content or "" for c in
                   g.chat.completions.create(stream=True, **kw) if c.choices)
    assert text == full.choices[0].message.content
    raw = g.chat.completions.with_raw_response.create(**kw)
    assert raw.http_request.url.path.endswith("/chat/completions")
    assert raw.headers["content-type"].startswith("application/json")
    assert raw.parse().choices[0].message.content == text
    copy = g.with_options(timeout=42.0)
    assert copy.chat.completions.create(**kw).choices[0].message.content == text


def test_per_call_vas_options(guided, upstream):
    _, g = guided
    r = g.completions.create(model=upstream.model, prompt="Hello", max_tokens=2, seed=1,
                             extra_body={"vas": {"beta": 0.0, "top_k": 5, "trace": True}})
    trace = r.choices[0].model_extra["vas_trace"]
    assert all(len(t["candidates"]) == 5 for t in trace)
    with pytest.raises(openai.BadRequestError, match="loaded: h"):
        g.completions.create(model=upstream.model, prompt="Hello", max_tokens=2,
                             extra_body={"vas": {"weights": {"other": 1.0}}})


def test_async_client(upstream):
    client = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="sk-upstream",
                                max_retries=0)
    g = vas_proxy.wrap(client, values=VALUES, beta=1.0, chat_template=str(smollm2_gguf()))
    assert type(g) is openai.AsyncOpenAI

    async def go():
        kw = dict(model=upstream.model, prompt="The weather today", max_tokens=8, seed=6)
        full = await g.completions.create(**kw)
        stream = await g.completions.create(stream=True, **kw)
        text = "".join([c.choices[0].text async for c in stream if c.choices])
        many = await asyncio.gather(*(g.completions.create(**{**kw, "seed": s})
                                      for s in range(4)))
        await g.close()
        return full, text, many

    full, text, many = asyncio.run(go())
    assert text == full.choices[0].text
    assert all(m.choices[0].text for m in many)


def test_wrap_rejects_other_objects():
    with pytest.raises(TypeError, match="openai.OpenAI"):
        vas_proxy.wrap(object())


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _settles(measure, target: int, timeout: float = 5.0) -> int:
    """measure() once it is <= target, or its last value after `timeout` (threads that were
    told to stop exit a moment later)."""
    deadline = time.monotonic() + timeout
    while (value := measure()) > target and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


CYCLES = 50
FD_SLACK = 3  # fds other code (the SDK, the cache's SQLite) may open once and keep


def test_close_releases_engine_thread_and_sockets(upstream):
    """Each wrap starts an engine thread and, on its first request, upstream connections and a
    cache worker: `close()` / `with` exit must release them all, cycle after cycle."""
    def cycle(i: int) -> None:
        client = openai.OpenAI(base_url=upstream.base_url, api_key="sk-upstream", max_retries=0)
        with vas_proxy.wrap(client, values=VALUES, beta=1.0) as g:
            r = g.completions.create(model=upstream.model, prompt="Hello", max_tokens=1, seed=i)
            assert r.usage.model_extra["vas"]["upstream_calls"] == 1  # it works before close
        with pytest.raises(RuntimeError, match="closed"):  # as for any closed openai client
            g.completions.create(model=upstream.model, prompt="Hello", max_tokens=1)
        client.close()

    cycle(0)  # warm-up: imports and one-off state (e.g. the cache's first open)
    threads, fds = threading.active_count(), _open_fds()
    for i in range(1, CYCLES + 1):
        cycle(i)
    # <=, not ==: a thread an earlier test left may end meanwhile; a leak grows the count
    assert _settles(threading.active_count, threads) <= threads
    assert _settles(_open_fds, fds + FD_SLACK) <= fds + FD_SLACK


def test_async_close_releases_sockets(upstream):
    async def go():
        async def cycle(i: int) -> None:
            client = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="sk-upstream",
                                        max_retries=0)
            async with vas_proxy.wrap(client, values=VALUES, beta=1.0) as g:
                r = await g.completions.create(model=upstream.model, prompt="Hello",
                                               max_tokens=1, seed=i)
                assert r.usage.model_extra["vas"]["upstream_calls"] == 1
            assert g.is_closed()
            await client.close()

        await cycle(0)
        threads, fds = threading.active_count(), _open_fds()
        for i in range(1, CYCLES // 2 + 1):
            await cycle(i)
        return threads, fds

    threads, fds = asyncio.run(go())
    assert _settles(threading.active_count, threads) <= threads
    assert _settles(_open_fds, fds + FD_SLACK) <= fds + FD_SLACK


def test_reward_as_value_pulls_toward_its_reward(upstream):
    """`reward:vader` guides with no trained model: over 10 seeds, paired, the guided answers'
    VADER beats the same seeds' base answers by more than 2 s.e. (beta 8 in VADER units)."""
    client = openai.OpenAI(base_url=upstream.base_url, api_key="sk-upstream", max_retries=0)
    msgs = [{"role": "user", "content": "Describe a rainy Monday at work."}]
    with vas_proxy.wrap(client, values={"r": "reward:vader"},
                        chat_template=str(smollm2_gguf())) as g:
        def answers(beta: float) -> list[str]:
            return [g.chat.completions.create(
                model=upstream.model, messages=msgs, max_tokens=12, seed=s,
                extra_body={"vas": {"beta": beta}}).choices[0].message.content
                for s in range(10)]
        base, guided = answers(0.0), answers(8.0)
    vader = load_reward("vader")
    diff = np.subtract(vader(["p"] * 10, guided), vader(["p"] * 10, base))
    assert diff.mean() > 2 * diff.std(ddof=1) / np.sqrt(len(diff)), (base, guided)
