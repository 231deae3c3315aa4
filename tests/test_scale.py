"""Past one machine (issue 14): the response cache in a real `redis-server` (Debian's package,
installed by `make test`, started here on a free port), shared by two `vas-proxy serve`
processes; Prometheus `/metrics`; readiness apart from liveness."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time

import httpx2 as httpx
import pytest
import redis

from vas_proxy.upstream.cache import open_cache
from vas_proxy.upstream.local import free_port
from vas_proxy.upstream.redis_cache import PREFIX, RedisCache

from service_helpers import fake_upstream_app, serve_app
from test_hostile import AUTH, KEY, make_app, post


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed: `make test` installs Debian's redis-server"
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path_factory.mktemp("rd"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline and proc.poll() is None, "redis did not start"
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def test_redis_cache_roundtrip_ttl_and_corrupt_entries(redis_url):
    async def main():
        c = open_cache(redis_url, ttl=60)
        assert isinstance(c, RedisCache) and await c.ping()
        await c.aset("k1", {"choices": [1, 2]})
        assert await c.aget("k1") == {"choices": [1, 2]}
        raw = redis.Redis.from_url(redis_url)
        assert 0 < raw.ttl(PREFIX + "k1") <= 60
        assert json.loads(raw.get(PREFIX + "k1")) == {"choices": [1, 2]}  # JSON text, no pickle
        raw.set(PREFIX + "k2", b"\x80\x04\x95 not json")  # e.g. a planted pickle
        assert await c.aget("k2") is None and raw.get(PREFIX + "k2") is None
        assert await c.aget("absent") is None
        await c.aclose()
    asyncio.run(main())


def test_a_redis_that_is_down_is_skipped():
    async def main():
        c = RedisCache(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
        assert await c.aget("k") is None  # a miss, not an error
        await c.aset("k", {"a": 1})
        assert not await c.ping()
        await c.aclose()
    asyncio.run(main())


def _start_worker(upstream: str, cache: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    return subprocess.Popen(
        [sys.executable, "-m", "vas_proxy", "serve", "--upstream", upstream, "--model", "m",
         "--chat-template", "chatml", "--value", "h=py:valuefns:char_hash", "--top-k", "5",
         "--port", str(port), "--api-key", KEY, "--cache", cache, "--log-level", "warning"],
        stderr=subprocess.PIPE, text=True, env=env)


def test_two_workers_share_the_redis_cache(redis_url):
    """The same seeded request answered by worker A, then by worker B: B replays A's upstream
    answers from Redis and makes no upstream call of its own."""
    up = fake_upstream_app()
    with serve_app(up) as upstream:
        ports = [free_port(), free_port()]
        procs = [_start_worker(f"{upstream}/v1", redis_url, p) for p in ports]
        try:
            for p, proc in zip(ports, procs):
                deadline = time.monotonic() + 120
                while True:
                    try:
                        if httpx.get(f"http://127.0.0.1:{p}/ready", timeout=2).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert proc.poll() is None and time.monotonic() < deadline, \
                        proc.stderr.read() if proc.poll() is not None else "worker did not start"
                    time.sleep(0.2)
            # one token per call (speculate 0): whole answers, which are cached (streamed drafts
            # are not: a cancelled stream is not a whole answer)
            body = {"model": "m", "prompt": "shared", "max_tokens": 4, "seed": 7,
                    "vas": {"speculate": 0}}
            a = post(f"http://127.0.0.1:{ports[0]}", "/v1/completions", body).json()
            after_a = up.state.calls
            b = post(f"http://127.0.0.1:{ports[1]}", "/v1/completions", body).json()
            assert after_a >= 1 and up.state.calls == after_a
            assert a["choices"][0]["text"] == b["choices"][0]["text"]
            assert b["usage"]["vas"]["cache_hits"] >= 1 and b["usage"]["vas"]["upstream_calls"] == 0
            ready = httpx.get(f"http://127.0.0.1:{ports[1]}/ready").json()
            assert ready["checks"] == {"upstream": "ok", "cache": "ok"}
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                _, err = proc.communicate(timeout=30)
                assert "Traceback" not in err, err


def _metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == (f"{name}{{{want}}}" if labels else name):
            return float(value)
    return 0.0


def test_metrics_count_requests_tokens_and_errors():
    with serve_app(make_app()) as u:
        assert httpx.get(f"{u}/metrics").status_code == 401  # behind the key
        r = post(u, "/v1/completions", {"model": "m", "prompt": "p", "max_tokens": 3})
        assert r.status_code == 200
        assert post(u, "/v1/completions", {"model": "m", "prompt": "p", "n": 0}).status_code == 400
        text = httpx.get(f"{u}/metrics", headers=AUTH).text
        assert _metric(text, "vas_proxy_requests_total", path="/v1/completions",
                       status="200") == 1
        assert _metric(text, "vas_proxy_requests_total", path="/metrics", status="401") == 1
        assert _metric(text, "vas_proxy_errors_total", code="invalid_value") == 1
        assert _metric(text, "vas_proxy_errors_total", code="invalid_api_key") == 1
        assert _metric(text, "vas_proxy_tokens_total", kind="completion") == 3
        assert _metric(text, "vas_proxy_upstream_calls_total") >= 1
        assert _metric(text, "vas_proxy_request_seconds_count", part="total") == 1
        assert _metric(text, "vas_proxy_kl_nats_count", kind="estimate") == 1  # one answer
        assert _metric(text, "vas_proxy_generations_in_flight") == 0


def test_readiness_follows_the_upstream_liveness_does_not():
    with serve_app(make_app()) as u:
        r = httpx.get(f"{u}/ready")
        assert r.status_code == 200 and r.json()["checks"] == {"upstream": "ok"}
    from service_helpers import FakeUpstream
    with serve_app(make_app(FakeUpstream(ok_calls=0, fail_status=503))) as u:
        r = httpx.get(f"{u}/ready", timeout=60)
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        assert httpx.get(f"{u}/health").status_code == 200
