"""`vas-proxy serve`'s app under uvicorn on a free port, driven by the real openai SDK
(max_retries=0) against the real upstream (llama-cpp-python on SmolLM2)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx2 as httpx
import numpy as np
import openai
import pytest

from vas_proxy.engine import Engine

from vas_proxy.guidance import Guidance
from vas_proxy.runtime import Runtime
from vas_proxy.service.app import create_app
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.values.callable import CallableValue

from service_helpers import FakeUpstream, serve_app
from valuefns import char_hash

KEY = "test-service-key"


def _values():
    return {"h": CallableValue(char_hash, "h"),
            "short": CallableValue(lambda p, cs: [-len(c) / 10 for c in cs], "short")}


@pytest.fixture(scope="module")
def service(upstream, chat_template):
    engine = Engine(UpstreamClient(upstream.base_url, upstream.model), _values(),
                    defaults=Guidance(beta=1.0), eos_texts=chat_template.stop_strings)
    app = create_app(Runtime(engine, chat_template, upstream.model, upstream.base_url),
                     api_key=KEY)
    with serve_app(app) as url:
        yield url, upstream.model


@pytest.fixture
def sdk(service):
    url, _ = service
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def test_completions_and_usage(sdk, service):
    _, model = service
    r = sdk.completions.create(model=model, prompt="The capital of France is", max_tokens=6,
                               seed=3)
    assert r.choices[0].text and r.choices[0].finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 6 and r.usage.prompt_tokens > 0
    vas = r.usage.model_extra["vas"]
    assert vas["upstream_calls"] >= 1  # adaptive drafts by default: maybe fewer than tokens
    assert vas["upstream_completion_tokens"] >= r.usage.completion_tokens
    assert vas["upstream_prompt_tokens"] >= r.usage.prompt_tokens
    assert set(vas) >= {"upstream_calls", "upstream_prompt_tokens",
                        "upstream_completion_tokens", "cache_hits"}


def test_chat_n_and_seed(sdk, service):
    _, model = service
    msgs = [{"role": "user", "content": "Name two animals."}]
    # Sequential same-seed requests reproduce. (Concurrent ones need not: llama-cpp-python's
    # logprobs move by ~1e-2 with its prefix-cache state, i.e. with how requests interleave.)
    one = [sdk.chat.completions.create(model=model, messages=msgs, max_tokens=10, seed=5)
           for _ in range(2)]
    assert one[0].choices[0].message.content == one[1].choices[0].message.content
    a = sdk.chat.completions.create(model=model, messages=msgs, max_tokens=10, seed=5, n=3)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert all(c.message.content for c in a.choices)
    assert len({c.message.content for c in a.choices}) > 1  # n independent samples
    assert a.choices[0].message.role == "assistant"


def test_stream_equals_non_stream(sdk, service):
    _, model = service
    kw = dict(model=model, max_tokens=12, seed=9)
    full = sdk.chat.completions.create(messages=[{"role": "user", "content": "Hi!"}], **kw)
    chunks = list(sdk.chat.completions.create(messages=[{"role": "user", "content": "Hi!"}],
                                              stream=True, stream_options={"include_usage": True},
                                              **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == \
        full.usage.completion_tokens
    # the KL it paid comes on the choice, and on the streamed choice's last chunk
    kl = full.choices[0].model_extra["vas_kl"]
    assert kl["kind"] == "estimate" and kl["nats"] > 0  # beta 1 moved q off the base
    ends = [c.choices[0].model_extra.get("vas_kl") for c in chunks
            if c.choices and c.choices[0].finish_reason]
    assert ends == [kl]
    comp = list(sdk.completions.create(prompt="Once upon a time", stream=True, **kw))
    assert "".join(c.choices[0].text for c in comp if c.choices)
    assert all(c.usage is None for c in comp)  # no usage chunk unless asked


def test_trace_and_logprobs(sdk, service):
    _, model = service
    r = sdk.completions.create(model=model, prompt="I feel", max_tokens=3, seed=1, logprobs=3,
                               extra_body={"vas": {"trace": True, "beta": 2.0, "top_k": 8}})
    choice = r.choices[0]
    trace = choice.model_extra["vas_trace"]
    assert 1 <= len(trace) <= 3
    for entry in trace:
        cands = entry["candidates"]
        assert len(cands) == 8 and set(cands[0]) == {"token", "logprob", "value", "prob"}
        assert sum(c["prob"] for c in cands) == pytest.approx(1.0)
        assert entry["chosen"] in [c["token"] for c in cands]
        # beta 2: prob ∝ exp(logprob + 2·value) with value the centred combined value
        lp = np.array([c["logprob"] for c in cands])
        v = np.array([c["value"] for c in cands])
        q = np.exp(lp + 2 * v)
        np.testing.assert_allclose([c["prob"] for c in cands], q / q.sum(), rtol=1e-6)
    # vas_kl is Σ over the states of KL(q ‖ p), p the base's top-k renormalised: from the trace
    kl = 0.0
    for entry in trace:
        q = np.array([c["prob"] for c in entry["candidates"]])
        p = np.exp([c["logprob"] for c in entry["candidates"]])
        p /= p.sum()
        kl += float(np.sum(q[q > 0] * np.log(q[q > 0] / p[q > 0])))
    assert choice.model_extra["vas_kl"] == {"nats": pytest.approx(kl, abs=2e-6),
                                            "kind": "estimate"}
    lp = choice.logprobs
    assert len(lp.top_logprobs[0]) <= 3 and len(lp.tokens) == len(lp.token_logprobs)


def test_weights_select_value_models(sdk, service):
    _, model = service
    r = sdk.completions.create(model=model, prompt="I feel", max_tokens=2, seed=1,
                               extra_body={"vas": {"trace": True, "weights": {"short": 1.0}}})
    for entry in r.choices[0].model_extra["vas_trace"]:
        cands = entry["candidates"]
        lens = np.array([len(c["token"]) for c in cands])
        np.testing.assert_allclose([c["value"] for c in cands],
                                   -(lens - lens.mean()) / 10, atol=1e-9)


def test_auth(service):
    url, model = service
    bad = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/health").status_code == 200  # health needs no key
    ok = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in ok.models.list()] == [model]


@pytest.mark.parametrize("body,status,needle", [
    (b"{not json", 400, "JSON"),
    ({"prompt": "hi"}, 400, "missing required field: model"),
    ({"model": "M", "prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
    ({"model": "M", "prompt": "hi", "temperature": 5}, 400, "temperature"),
    ({"model": "M", "prompt": "hi", "n": 0}, 400, "n"),
    ({"model": "nope", "prompt": "hi"}, 404, "does not exist"),
    ({"model": "M", "prompt": "hi", "vas": {"weights": {"evil": 1}}}, 400, "loaded: h, short"),
    ({"model": "M", "prompt": "hi", "vas": {"beta": "x"}}, 400, "vas.beta"),
    ({"model": "M", "prompt": "hi", "vas": {"reward_fn": "py:os:system"}}, 400, "unknown `vas`"),
])
def test_error_envelopes(service, body, status, needle):
    url, model = service
    if isinstance(body, dict) and body.get("model") == "M":
        body = {**body, "model": model}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{url}/v1/completions", content=content, timeout=30,
                   headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and needle in err["message"]


def test_upstream_failure_mid_stream_is_an_error_event(chat_template):
    fake = FakeUpstream(ok_calls=3)
    engine = Engine(UpstreamClient("http://fake/v1", "m", transport=fake.transport()),
                    {}, defaults=Guidance(beta=0.0, top_k=5))
    app = create_app(Runtime(engine, chat_template, "m", "http://fake/v1"))
    with serve_app(app) as url:
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        got = []
        with pytest.raises(openai.APIError, match="500"):
            for chunk in sdk.completions.create(model="m", prompt="p", max_tokens=10, temperature=0,
                                                stream=True):
                got.append(chunk.choices[0].text)
        assert "".join(got) == "HelloHelloHello"


def test_client_disconnect_stops_upstream_calls(chat_template):
    fake = FakeUpstream(fail_status=None, delay=0.05)
    engine = Engine(UpstreamClient("http://fake/v1", "m", transport=fake.transport()),
                    {}, defaults=Guidance(beta=0.0, top_k=5))
    app = create_app(Runtime(engine, chat_template, "m", "http://fake/v1"))
    with serve_app(app) as url:
        with httpx.stream("POST", f"{url}/v1/completions", timeout=30,
                          json={"model": "m", "prompt": "p", "max_tokens": 500,
                                "stream": True}) as r:
            lines = r.iter_lines()
            for _ in range(6):
                next(lines)
        time.sleep(0.5)
        after_close = fake.calls
        time.sleep(1.0)
        assert fake.calls <= after_close + 1 and fake.calls < 60


def test_serve_refuses_public_bind_without_key():
    r = subprocess.run([sys.executable, "-m", "vas_proxy", "serve", "--host", "0.0.0.0",
                        "--value", "h=py:vas_proxy.values.heuristics:positivity"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "without an API key" in r.stderr and "Traceback" not in r.stderr


def test_16_concurrent_streams_all_make_progress(service):
    """Scoring runs off the event loop and upstream calls interleave: every one of 16 streams
    gets its first token before any of them finishes."""
    url, model = service

    async def one(client, i, t0):
        first = None
        async with client.stream("POST", f"{url}/v1/completions", json={
                "model": model, "prompt": f"Story number {i}:", "max_tokens": 6, "seed": i,
                "stream": True, "vas": {"beta": 1.0, "top_k": 10}}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {") and first is None and '"text":""' not in line:
                    first = time.perf_counter() - t0
        return first, time.perf_counter() - t0

    async def main():
        t0 = time.perf_counter()
        async with httpx.AsyncClient(timeout=300,
                                     headers={"authorization": f"Bearer {KEY}"}) as client:
            return await asyncio.gather(*(one(client, i, t0) for i in range(16)))

    res = asyncio.run(main())
    firsts, dones = [f for f, _ in res], [d for _, d in res]
    assert all(f is not None for f in firsts)
    assert max(firsts) < min(dones)


def test_serve_command_end_to_end(upstream):
    """`vas-proxy serve` as users run it: answers the stock SDK, stops cleanly on Ctrl-C."""
    import os
    import signal

    from vas_proxy.upstream.local import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vas_proxy", "serve", "--upstream", upstream.base_url,
         "--chat-template", "chatml", "--value", "h=py:valuefns:char_hash", "--port", str(port),
         "--api-key", "k", "--log-level", "info"],
        stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        model = sdk.models.list().data[0].id
        assert model == upstream.model  # asked from the upstream when --model is not given
        r = sdk.chat.completions.create(model=model, max_tokens=4, seed=1,
                                        messages=[{"role": "user", "content": "Hi"}])
        assert r.usage.completion_tokens >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, 130), err  # uvicorn re-raises the SIGINT after shutting down
    assert "Application shutdown complete" in err
    assert "upstream_calls=" in err  # the per-request summary line
    assert "Traceback" not in err
