"""Upstream response cache: hits against the real upstream make no HTTP call, entries are JSON
text (never pickle), and the cache survives killed writers, concurrent writers and its size limit.
Every test uses its own cache directory under tmp_path."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import httpx2 as httpx
import pytest

from vas_proxy.upstream import cache as cache_mod
from vas_proxy.upstream.cache import ResponseCache, cache_key, cacheable, default_cache_dir
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.upstream.retry import RetryPolicy

PROMPT = "The capital of France is"
SECRET = "sk-secret-do-not-store-4242"


class Counting(httpx.AsyncHTTPTransport):
    """The real network transport, counting the requests that go through it."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    async def handle_async_request(self, request):
        self.calls += 1
        return await super().handle_async_request(request)


class Refusing(httpx.AsyncBaseTransport):
    """Answers no request: a cache hit must not reach it."""

    calls = 0

    async def handle_async_request(self, request):
        self.calls += 1
        return httpx.Response(500, json={"error": {"message": "the cache should have answered"}})


def client_for(upstream, cache_dir, transport, **kw):
    return UpstreamClient(upstream.base_url, upstream.model, cache_dir=str(cache_dir),
                          transport=transport, retry=RetryPolicy.none(), **kw)


def complete(client, *requests):
    """Run the requests ({complete kwargs}) in order on one event loop, then close the client."""
    async def go():
        try:
            return [await client.complete(**{"prompt": PROMPT, "max_tokens": 3, "top_k": 20, **r})
                    for r in requests]
        finally:
            await client.aclose()
    return asyncio.run(go())


def rows(cache_dir):
    con = sqlite3.connect(cache_dir / "cache.db")
    try:
        return con.execute("SELECT key, raw, mode, filename, typeof(value), value FROM Cache"
                           ).fetchall()
    finally:
        con.close()


def test_hit_is_identical_and_makes_no_http_call(upstream, tmp_path):
    counting = Counting()
    (first,) = complete(client_for(upstream, tmp_path, counting, api_key=SECRET), {"seed": 11})
    assert counting.calls == 1 and not first.cached and first.positions
    refusing = Refusing()
    # another process-like client, another API key: the key is not part of the cache key
    (hit,) = complete(client_for(upstream, tmp_path, refusing, api_key="sk-other"), {"seed": 11})
    assert refusing.calls == 0 and hit.cached
    assert dataclasses.replace(hit, cached=False) == first  # positions, text, billed tokens, raw
    assert hit.prompt_tokens > 0 and hit.completion_tokens == first.completion_tokens
    # the secret is nowhere on disk
    for dirpath, _, files in os.walk(tmp_path):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                assert SECRET.encode() not in fh.read()


def test_seed_prompt_and_reproducibility_decide_what_is_cached(upstream, tmp_path):
    counting = Counting()
    res = complete(client_for(upstream, tmp_path, counting),
                   {"seed": 1}, {"seed": 2}, {"seed": 1, "prompt": "Once upon a time"},
                   {"seed": 1},                                  # hit
                   {}, {},                                       # no seed, T=1: never cached
                   {"temperature": 0.0}, {"temperature": 0.0},   # greedy: cached
                   {"seed": 1, "max_tokens": 2})                 # another body field: miss
    assert [r.cached for r in res] == [False, False, False, True, False, False, False, True, False]
    assert counting.calls == 7
    assert len(rows(tmp_path)) == 5


def test_use_cache_false_and_per_call_opt_out(upstream, tmp_path):
    counting = Counting()
    complete(client_for(upstream, tmp_path / "off", counting, use_cache=False),
             {"seed": 3}, {"seed": 3})
    assert counting.calls == 2 and not (tmp_path / "off").exists()
    counting = Counting()
    res = complete(client_for(upstream, tmp_path / "on", counting),
                   {"seed": 3, "cache": False}, {"seed": 3}, {"seed": 3})
    assert counting.calls == 2 and [r.cached for r in res] == [False, False, True]


def test_concurrent_requests_share_one_cache(upstream, tmp_path):
    seeds = range(20, 26)

    async def burst(client):
        try:
            return await asyncio.gather(*(client.complete(PROMPT, max_tokens=1, top_k=20, seed=s)
                                          for s in seeds))
        finally:
            await client.aclose()
    counting = Counting()
    first = asyncio.run(burst(client_for(upstream, tmp_path, counting)))
    refusing = Refusing()
    again = asyncio.run(burst(client_for(upstream, tmp_path, refusing)))
    assert counting.calls == len(seeds) and refusing.calls == 0
    assert all(r.cached for r in again)
    assert [r.positions for r in again] == [r.positions for r in first]


def test_key_material():
    body = {"model": "m", "prompt": "hi", "max_tokens": 1, "logprobs": 20, "temperature": 1.0,
            "seed": 1}
    k = cache_key("http://u/v1", "/completions", body)
    assert k == cache_key("http://u/v1/", "/completions", dict(reversed(list(body.items()))))
    assert len(k) == 64 and int(k, 16) >= 0
    others = [cache_key("http://other/v1", "/completions", body),
              cache_key("http://u/v1", "/chat/completions", body)]
    for field, value in [("model", "m2"), ("prompt", "hi!"), ("prompt", [1, 2]), ("seed", 2),
                         ("max_tokens", 2), ("logprobs", 5), ("temperature", 0.5), ("top_p", 0.9)]:
        others.append(cache_key("http://u/v1", "/completions", {**body, field: value}))
    assert len({k, *others}) == len(others) + 1
    assert cacheable(body) and cacheable({**body, "seed": None, "temperature": 0})
    assert not cacheable({**body, "seed": None}) and not cacheable({"temperature": 0.7})


def test_entries_are_json_text_never_pickle(tmp_path):
    c = ResponseCache(tmp_path)
    data = {"choices": [{"text": "é\ud83d", "logprobs": None}], "usage": {"prompt_tokens": 3},
            "x": [1.5, -9999.0, None, True]}
    c.set("a" * 64, data)
    assert c.get("a" * 64) == data
    c.close()
    ((key, raw, mode, filename, typ, value),) = rows(tmp_path)
    assert (key, raw, mode, filename, typ) == ("a" * 64, 1, 1, None, "text")  # 1 = MODE_RAW
    assert json.loads(value) == data and not value.startswith("\x80")
    # no value files next to the database
    assert set(os.listdir(tmp_path)) <= {"cache.db", "cache.db-shm", "cache.db-wal"}
    with pytest.raises(TypeError):
        c.set(b"bytes-key", data)


def _plant(cache_dir, key, mode, value, filename=None):
    con = sqlite3.connect(cache_dir / "cache.db")
    with con:
        con.execute("INSERT OR REPLACE INTO Cache (key, raw, store_time, access_time, "
                    "access_count, size, mode, filename, value) VALUES (?, 1, 0, 0, 0, 0, ?, ?, ?)",
                    (key, mode, filename, value))
    con.close()


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_planted_rows_are_never_unpickled_nor_read_from_files(tmp_path):
    cdir = tmp_path / "c"
    c = ResponseCache(cdir)
    c.set("warmup", {"ok": True})  # creates the database
    marker = tmp_path / "pwned"
    _plant(cdir, "p1", 4, sqlite3.Binary(pickle.dumps(_Evil(str(marker)))))  # 4 = MODE_PICKLE
    outside = tmp_path / "outside.json"
    outside.write_text('{"stolen": true}')
    _plant(cdir, "p2", 3, None, filename=str(outside))  # 3 = MODE_TEXT, absolute file name
    _plant(cdir, "p3", 1, "{not json")
    _plant(cdir, "p4", 1, sqlite3.Binary(b'{"raw": "bytes"}'))
    assert c.get("p1") is None and not marker.exists()  # the pickle never ran
    for key in ["p2", "p3", "p4"]:
        assert c.get(key) is None, key
    assert outside.exists()  # the planted file was neither read nor deleted
    assert [r[0] for r in rows(cdir)] == ["warmup"]  # corrupt rows were dropped
    assert c.get("warmup") == {"ok": True}


def test_a_corrupt_entry_is_refetched_through_the_client(tmp_path):
    answers = []

    def handler(req):
        answers.append(1)
        return httpx.Response(200, json={
            "choices": [{"text": "a", "finish_reason": "length", "logprobs": {
                "tokens": ["a"], "token_logprobs": [-0.1],
                "top_logprobs": [{"a": -0.1, "b": -2.5}]}}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 1}})
    client = UpstreamClient("http://fake/v1", "m", cache_dir=str(tmp_path),
                            transport=httpx.MockTransport(handler), retry=RetryPolicy.none())
    (res,) = complete(client, {"seed": 5, "top_k": 2, "max_tokens": 1})
    (key,) = [r[0] for r in rows(tmp_path)]
    _plant(tmp_path, key, 1, '{"choices": "garbage"}')  # JSON, but not an answer we can parse
    client = UpstreamClient("http://fake/v1", "m", cache_dir=str(tmp_path),
                            transport=httpx.MockTransport(handler), retry=RetryPolicy.none())
    (again, hit) = complete(client, {"seed": 5, "top_k": 2, "max_tokens": 1},
                            {"seed": 5, "top_k": 2, "max_tokens": 1})
    assert len(answers) == 2 and not again.cached and hit.cached
    assert again.positions == res.positions == hit.positions


def test_an_unusable_cache_never_fails_a_request(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    calls = []

    def handler(req):
        calls.append(1)
        empty = {"text": "", "finish_reason": "stop",
                 "logprobs": {"tokens": [], "top_logprobs": []}}
        return httpx.Response(200, json={"choices": [empty]})
    client = UpstreamClient("http://fake/v1", "m", cache_dir=str(blocker / "sub"),
                            transport=httpx.MockTransport(handler), retry=RetryPolicy.none())
    with caplog.at_level("WARNING", logger="vas_proxy.upstream"):
        complete(client, {"seed": 1}, {"seed": 1})
    assert len(calls) == 2
    assert sum("going on without it" in r.getMessage() for r in caplog.records) == 1


def test_default_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("VAS_PROXY_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert UpstreamClient("http://x/v1", "m").cache.directory == tmp_path / "env"
    monkeypatch.delenv("VAS_PROXY_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "vas-proxy"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "vas-proxy"


WRITER = textwrap.dedent("""
    import sys
    from vas_proxy.upstream.cache import ResponseCache
    cache = ResponseCache(sys.argv[1])
    name, n, blob = sys.argv[2], int(sys.argv[3]), "x" * int(sys.argv[4])
    for i in range(n if n else 10**9):
        cache.set(f"{name}{i % 5000}", {"name": name, "i": i % 5000, "blob": blob})
        if i == 200:
            print("ready", flush=True)
    print("done", flush=True)
""")


def _writer(cache_dir, name, n, blob=100):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(cache_dir), name, str(n), str(blob)],
                            stdout=subprocess.PIPE, text=True)


def test_writer_killed_mid_write_leaves_a_usable_cache(tmp_path):
    for round_ in range(3):
        proc = _writer(tmp_path, "k", 0, blob=20_000)
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(0.05 * round_)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
    con = sqlite3.connect(tmp_path / "cache.db")
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
    c = ResponseCache(tmp_path)
    found = 0
    for i in range(5000):
        got = c.get(f"k{i}")
        if got is not None:
            assert got == {"name": "k", "i": i, "blob": "x" * 20_000}
            found += 1
    assert found >= 200
    c.set("after", {"fine": True})
    assert c.get("after") == {"fine": True}


def test_concurrent_writers_threads_and_processes(tmp_path):
    procs = [_writer(tmp_path, f"p{j}-", 300) for j in range(3)]
    shared = ResponseCache(tmp_path)
    errors = []

    def thread_writer(j):
        try:
            own = ResponseCache(tmp_path) if j % 2 else shared  # shared object and own objects
            for i in range(150):
                own.set(f"t{j}-{i}", {"j": j, "i": i})
                assert own.get(f"t{j}-{i}") == {"j": j, "i": i}
        except Exception as e:  # surfaced below
            errors.append(e)
    threads = [threading.Thread(target=thread_writer, args=(j,)) for j in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        assert p.wait(timeout=120) == 0 and p.stdout.read().strip().endswith("done")
    assert not errors
    check = ResponseCache(tmp_path)
    for j in range(3):
        for i in range(300):
            assert check.get(f"p{j}-{i}") == {"name": f"p{j}-", "i": i, "blob": "x" * 100}
    for j in range(6):
        for i in range(150):
            assert check.get(f"t{j}-{i}") == {"j": j, "i": i}


def test_async_calls_run_off_the_event_loop(tmp_path):
    c = ResponseCache(tmp_path)

    async def go():
        loop_thread = threading.get_ident()
        seen = []
        real_set = c.set
        c.set = lambda k, d: (seen.append(threading.get_ident()), real_set(k, d))
        await asyncio.gather(*(c.aset(f"k{i}", {"i": i}) for i in range(50)))
        got = await asyncio.gather(*(c.aget(f"k{i}") for i in range(50)))
        await c.aclose()
        return loop_thread, seen, got
    loop_thread, seen, got = asyncio.run(go())
    assert got == [{"i": i} for i in range(50)] and loop_thread not in seen


def test_size_limit_evicts_oldest(tmp_path):
    limit = 256 * 1024
    c = ResponseCache(tmp_path, size_limit=limit)
    for i in range(400):  # ~1.6 MB of entries
        c.set(f"k{i}", {"i": i, "blob": "x" * 4000})
    present = [i for i in range(400) if c.get(f"k{i}") is not None]
    assert 20 <= len(present) < 100
    assert present == list(range(400 - len(present), 400))  # the newest survive
    size = sum(os.path.getsize(tmp_path / f) for f in os.listdir(tmp_path) if f == "cache.db")
    assert size < 2 * limit
    assert cache_mod.DEFAULT_SIZE_LIMIT == 1 << 30
