"""Issue 14's findings, one regression test each: bad input is a 400 (never a 500 or a silent
200), the key is checked before the body, secrets never reach a client, the operator's limits
answer 400/413/429/504 in the envelope, and work whose client left is cancelled.

The app runs under uvicorn over a fake upstream (service_helpers.FakeUpstream): the faults and
hangs here are what a real upstream cannot produce on demand."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import stat
import time

import httpx2 as httpx
import pytest

from vas_proxy.engine import Engine
from vas_proxy.guidance import Guidance
from vas_proxy.options import LimitOptions
from vas_proxy.redact import redact, redact_url
from vas_proxy.runtime import Runtime
from vas_proxy.service.app import create_app
from vas_proxy.templates import load_template
from vas_proxy.upstream.cache import ResponseCache
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.values.callable import CallableValue

from service_helpers import FakeUpstream, fake_position_body, serve_app

KEY = "hostile-key"
AUTH = {"authorization": f"Bearer {KEY}"}
MSG = [{"role": "user", "content": "hi"}]
SECRET_URL = "http://alice:s3cr3t-pass@fake/v1"


def make_app(fake: FakeUpstream | None = None, limits: LimitOptions | None = None,
             url: str = "http://fake/v1", upstream_key: str | None = None,
             passthrough_models: bool = False):
    fake = fake or FakeUpstream(fail_status=None)
    client = UpstreamClient(url, "m", transport=fake.transport(), use_cache=False,
                            api_key=upstream_key)
    engine = Engine(client, {"h": CallableValue(lambda p, cs: [len(c) / 7 for c in cs], "h")},
                    defaults=Guidance(beta=1.0, top_k=5), eos_texts=["<|im_end|>"])
    return create_app(Runtime(engine, load_template("chatml"), "m", url), api_key=KEY,
                      limits=limits or LimitOptions(), passthrough_models=passthrough_models)


@pytest.fixture(scope="module")
def url():
    with serve_app(make_app()) as u:
        yield u


def post(url, path, body, **kw):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}{path}", content=content, timeout=30,
                      headers={**AUTH, "content-type": "application/json", **kw})


def envelope(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


C, CH = "/v1/completions", "/v1/chat/completions"


@pytest.mark.parametrize("path,body,param,needle", [
    (C, {"prompt": "\ud800"}, "prompt", "lone surrogate"),
    (CH, {"messages": [{"role": "user", "content": "a\udfffb"}]}, "messages.0.content",
     "lone surrogate"),
    (CH, {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages.0.content", "needs a string `text`"),
    (CH, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
     "messages.0.content", "type 'image_url': only text parts"),
    (CH, {"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}]},
     "messages.0.content", "type 'input_audio'"),
    (C, {"prompt": "p", "logprobs": 2, "vas": {"beta": 1e200}}, "vas.beta", "|beta| <= 10000"),
    (C, {"prompt": "p", "n": True}, "n", "valid integer"),
    (C, {"prompt": "p", "stream": "yes"}, "stream", "valid boolean"),
    (C, {"prompt": "p", "seed": 2**64}, "seed", "less than"),
    (CH, {"messages": MSG, "tools": [{"type": "function", "function": {"name": "f"}}]},
     "tools", "tool and function calling"),
    (CH, {"messages": MSG, "tool_choice": "auto"}, "tool_choice", "not supported"),
    (CH, {"messages": MSG, "functions": [{"name": "f"}]}, "functions", "not supported"),
    (CH, {"messages": MSG, "response_format": {"type": "json_object"}}, "response_format",
     "structured output"),
    (CH, {"messages": MSG, "response_format": {"type": "json_schema", "json_schema": {}}},
     "response_format", "structured output"),
    (C, {"prompt": "p", "suffix": "end"}, "suffix", "insertion"),
    (C, {"prompt": "p", "best_of": 3}, "best_of", "vas.best_of"),
    (C, {"prompt": "p", "logit_bias": {"50256": -100}}, "logit_bias", "sampling distribution"),
    (CH, {"messages": MSG, "presence_penalty": 0.5}, "presence_penalty", "sampling"),
    (CH, {"messages": MSG, "frequency_penalty": 1}, "frequency_penalty", "sampling"),
    (C, {"prompt": "p", "echo": True}, "echo", "echo"),
    (CH, {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
     "messages.0.tool_calls", "tool"),
])
def test_bad_input_is_a_400_naming_the_field(url, path, body, param, needle):
    err = envelope(post(url, path, {"model": "m", "max_tokens": 2, **body}), 400)
    assert err["param"] == param and needle in err["message"], err
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("path,body", [
    (C, {"prompt": "p", "seed": -1}),  # any integer is a seed (taken modulo 2**64)
    (C, {"prompt": "p", "echo": False, "best_of": 1, "suffix": None, "logit_bias": {}}),
    (CH, {"messages": MSG, "presence_penalty": 0, "frequency_penalty": 0.0, "tool_choice": "none",
          "tools": [], "response_format": {"type": "text"}, "parallel_tool_calls": False}),
    (CH, {"messages": MSG, "user": "u", "metadata": {"a": "b"}, "store": False}),  # harmless
    (CH, {"messages": [{"role": "user", "content": [{"type": "text", "text": "h"},
                                                     {"type": "text", "text": "i"}]}]}),
])
def test_neutral_values_and_harmless_fields_are_accepted(url, path, body):
    r = post(url, path, {"model": "m", "max_tokens": 2, **body})
    assert r.status_code == 200, r.text


def test_seed_minus_one_is_reproducible(url):
    a, b = (post(url, C, {"model": "m", "prompt": "p", "max_tokens": 4, "seed": -1}).json()
            for _ in range(2))
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


def test_a_500_keeps_the_connection_and_the_next_request_works():
    """An unexpected failure is a 500 envelope, and the keep-alive connection survives it."""
    calls = {"n": 0}

    class Boom(FakeUpstream):
        async def handler(self, request):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("a bug of ours")
            return await super().handler(request)

    with serve_app(make_app(Boom(fail_status=None))) as u, httpx.Client(timeout=30) as s:
        body = {"model": "m", "prompt": "p", "max_tokens": 1}
        r1 = s.post(f"{u}{C}", json=body, headers=AUTH)
        envelope(r1, 500)
        r2 = s.post(f"{u}{C}", json=body, headers=AUTH)
        assert r2.status_code == 200
        assert r1.headers.get("connection") != "close"


@pytest.mark.parametrize("shape", ["lists", "strings", "no-choices-list"])
@pytest.mark.parametrize("stream", [False, True])
def test_malformed_upstream_logprobs_are_a_502(shape, stream):
    class Malformed(FakeUpstream):
        async def handler(self, request):
            body = fake_position_body()
            lp = body["choices"][0]["logprobs"]
            if shape == "lists":
                lp["top_logprobs"] = [[["Hello", -0.1]]]
            elif shape == "strings":
                lp["top_logprobs"] = [{"Hello": "high"}]
            else:
                body["choices"] = {"0": body["choices"][0]}
            if json.loads(request.content).get("stream"):
                text = f"data: {json.dumps(body)}\n\ndata: [DONE]\n\n"
                return httpx.Response(200, text=text,
                                      headers={"content-type": "text/event-stream"})
            return httpx.Response(200, json=body)

    with serve_app(make_app(Malformed(fail_status=None))) as u:
        r = post(u, C, {"model": "m", "prompt": "p", "max_tokens": 3, "stream": stream})
        if stream:
            assert r.status_code == 200
            events = [json.loads(x[6:]) for x in r.text.split("\n\n")
                      if x.startswith("data: {")]
            err = events[-1]["error"]
            assert err["type"] == "upstream_error" and "NaN" not in r.text
        else:
            err = envelope(r, 502)
        assert err["code"] == "upstream_malformed_answer", err


def test_the_key_is_checked_before_the_body_and_guards_the_schema(url):
    for content in (b"{not json", json.dumps({"model": 5}).encode()):
        r = httpx.post(f"{url}{C}", content=content, headers={"authorization": "Bearer no"})
        assert envelope(r, 401)["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/openapi.json").status_code == 401
    schema = httpx.get(f"{url}/openapi.json", headers=AUTH).json()
    ops = schema["paths"]["/v1/completions"]["post"]["responses"]
    assert "422" not in ops and "400" in ops and "429" in ops


def test_secrets_never_reach_a_client():
    class Echo(FakeUpstream):
        async def handler(self, request):
            auth = request.headers["authorization"]
            return httpx.Response(401, json={"error": {"message": f"bad key in header {auth}"}})

    app = make_app(Echo(fail_status=None), url=SECRET_URL, upstream_key="sk-live-abcdef123456")
    with serve_app(app) as u:
        health = httpx.get(f"{u}/health").text
        r = post(u, C, {"model": "m", "prompt": "p", "max_tokens": 1})
        assert r.status_code >= 400
        for leaked in ("s3cr3t-pass", "alice:", "sk-live-abcdef123456"):
            assert leaked not in health and leaked not in r.text, (leaked, health, r.text)
        # httpx sends the URL's user:pass as Basic auth; either way it is masked
        assert re.search(r"bad key in header (Basic|Bearer) \*\*\*$", r.json()["error"]["message"])


def test_redact_masks_urls_and_keys():
    assert redact_url("https://u:p@h.example/v1?api_key=XYZ&x=1") == \
        "https://***@h.example/v1?api_key=***&x=1"
    assert redact("boom Authorization: Bearer abc.def-123 at http://u:p@h/v1 sk-abcdefghijk") == \
        "boom Authorization: Bearer *** at http://***@h/v1 sk-***"


def test_an_upstream_429_is_a_429_with_retry_after():
    class Limited(FakeUpstream):
        async def handler(self, request):
            self.calls += 1
            return httpx.Response(429, json={"error": {"message": "slow down"}},
                                  headers={"retry-after": "0"})

    fake = Limited(fail_status=None)
    with serve_app(make_app(fake)) as u:
        r = post(u, C, {"model": "m", "prompt": "p", "max_tokens": 1})
        err = envelope(r, 429)
        assert err["type"] == "rate_limit_error" and "slow down" in err["message"]
        assert int(r.headers["retry-after"]) >= 1


@pytest.mark.parametrize("limits,body,status,param", [
    (LimitOptions(max_tokens=8), {"prompt": "p", "max_tokens": 9}, 400, "max_tokens"),
    (LimitOptions(n=2), {"prompt": "p", "n": 3}, 400, "n"),
    (LimitOptions(prompt_chars=10), {"prompt": "x" * 11}, 400, "prompt"),
    (LimitOptions(generations=4), {"prompt": "p", "n": 5}, 400, "n"),
    (LimitOptions(body_bytes=1000), {"prompt": "x" * 2000}, 413, None),
])
def test_operator_limits(limits, body, status, param):
    with serve_app(make_app(limits=limits)) as u:
        r = post(u, C, {"model": "m", "max_tokens": 1, **body})
        err = envelope(r, status)
        assert err["param"] == param
        assert err["code"] == ("request_too_large" if status == 413 else "limit_exceeded")


def test_a_chunked_body_over_the_limit_is_a_413():
    with serve_app(make_app(limits=LimitOptions(body_bytes=1000))) as u:
        def chunks():
            yield b'{"model": "m", "prompt": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'"}'
        r = httpx.post(f"{u}{C}", content=chunks(), timeout=30,
                       headers={**AUTH, "content-type": "application/json"})
        assert envelope(r, 413)["code"] == "request_too_large"


def test_a_full_house_is_a_429_and_frees_its_room():
    fake = FakeUpstream(fail_status=None, delay=0.2)
    with serve_app(make_app(fake, limits=LimitOptions(generations=2))) as u:
        async def main():
            async with httpx.AsyncClient(timeout=30, headers=AUTH) as c:
                slow = c.post(f"{u}{C}", json={"model": "m", "prompt": "p", "max_tokens": 3,
                                               "n": 2})
                task = asyncio.ensure_future(slow)
                await asyncio.sleep(0.3)
                busy = await c.post(f"{u}{C}", json={"model": "m", "prompt": "p",
                                                     "max_tokens": 1})
                first = await task
                after = await c.post(f"{u}{C}", json={"model": "m", "prompt": "p",
                                                      "max_tokens": 1})
                return busy, first, after

        busy, first, after = asyncio.run(main())
        err = envelope(busy, 429)
        assert err["code"] == "server_overloaded" and busy.headers["retry-after"] == "1"
        assert first.status_code == 200 and after.status_code == 200


@pytest.mark.parametrize("stream", [False, True])
def test_the_deadline_cancels_a_request(stream):
    fake = FakeUpstream(fail_status=None, delay=0.1)
    with serve_app(make_app(fake, limits=LimitOptions(deadline=0.5))) as u:
        t0 = time.monotonic()
        r = post(u, C, {"model": "m", "prompt": "p", "max_tokens": 1000, "stream": stream})
        took = time.monotonic() - t0
        if stream:
            events = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: {")]
            err = events[-1]["error"]
        else:
            err = envelope(r, 504)
        assert err["code"] == "deadline_exceeded" and took < 3.0
        calls = fake.calls
        time.sleep(0.5)
        assert fake.calls <= calls + 1  # nothing runs on for it


def test_a_non_streamed_request_stops_when_its_client_leaves():
    """The finding: `curl -m 3` on max_tokens 1e9 kept calling the upstream after curl left."""
    fake = FakeUpstream(fail_status=None, delay=0.02)
    with serve_app(make_app(fake, limits=LimitOptions(max_tokens=10**6))) as u:
        host, port = u.removeprefix("http://").split(":")
        body = json.dumps({"model": "m", "prompt": "x", "max_tokens": 10**6}).encode()
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                      b"application/json\r\nauthorization: Bearer " + KEY.encode() +
                      b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            time.sleep(0.5)
            assert fake.calls > 3  # it is generating
        time.sleep(0.5)
        after_close = fake.calls
        time.sleep(1.0)
        assert fake.calls <= after_close + 1


def test_an_existing_cache_directory_is_made_private(tmp_path):
    d = tmp_path / "cache"
    d.mkdir(mode=0o777)
    d.chmod(0o777)
    c = ResponseCache(d)
    c.set("k", {"a": 1})
    c.close()
    ResponseCache(d).get("k")  # reopened: tightened again
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in d.rglob("*") if p.is_file())
    shared = tmp_path / "shared"  # not a cache: its modes are left alone
    shared.mkdir()
    (shared / "notes.txt").write_text("x")
    shared.chmod(0o755)
    ResponseCache(shared).get("k")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
