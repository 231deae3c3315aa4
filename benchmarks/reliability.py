"""The reliability suite, one command: `python benchmarks/reliability.py` (`--short` for CI,
as tests/test_reliability.py runs it).

1. The test files that hold the line: fuzzing (schemathesis, positive and negative), the
   hostile-body corpus, every upstream fault × streaming and not, Redis and metrics.
2. Load: `vas-proxy serve` (beta 0, one token per call) over a fake upstream process, N
   concurrent streams for D seconds: errors, p50/p95/p99 request latency, the serve process's
   RSS and open fds sampled every second (flat = within 10 % / a few fds).
3. Proxy overhead per token at beta 0: the same 16 one-token upstream calls, direct vs through
   the proxy, interleaved, as the median ratio (goal <= 1.10x).
4. SIGKILL of the proxy mid-stream: its disk cache must open, pass diskcache's check and
   replay what was stored.
5. 50 `wrap()` cycles: threads and fds of this process before and after (goal: 0 leaked).

Figures go to stdout and docs/bench/reliability[_short].json. Run it alone: nothing else heavy
on the machine, or the latencies say more about the neighbour than about us.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from vas_proxy.upstream.local import free_port  # noqa: E402

KEY = "reliability-key"
AUTH = {"authorization": f"Bearer {KEY}"}


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.1)


def start_fake() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "service_helpers.py"),
                             str(port)], stderr=subprocess.PIPE, text=True, cwd=ROOT / "tests")
    _wait_http(f"http://127.0.0.1:{port}/v1/models", proc)
    return proc, f"http://127.0.0.1:{port}/v1"


def start_serve(upstream: str, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vas_proxy", "serve", "--upstream", upstream, "--model", "m",
         "--chat-template", "chatml", "--value", "h=py:valuefns:char_hash", "--top-k", "5",
         "--beta", "0", "--speculate", "0", "--port", str(port), "--api-key", KEY,
         "--log-level", "warning", *extra], stderr=subprocess.PIPE, text=True, env=env)
    _wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc, f"http://127.0.0.1:{port}"


def proc_stats(pid: int) -> tuple[int, int]:
    """(RSS bytes, open fds) of process `pid`, from /proc."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


# ---------------------------------------------------------------------------- load

def load(streams: int, seconds: float, max_tokens: int = 16) -> dict:
    fake, upstream = start_fake()
    serve, url = start_serve(upstream)
    try:
        samples: list[tuple[float, int, int]] = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                samples.append((time.monotonic(), *proc_stats(serve.pid)))
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        lat, errors, tokens = [], {}, 0

        async def client(c: httpx.AsyncClient, i: int, until: float):
            nonlocal tokens
            j = 0
            while time.monotonic() < until:
                t0 = time.monotonic()
                try:
                    got = 0
                    async with c.stream("POST", f"{url}/v1/completions", json={
                            "model": "m", "prompt": f"client {i} request {j}",
                            "max_tokens": max_tokens, "stream": True}) as r:
                        if r.status_code != 200:
                            errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                            continue
                        async for line in r.aiter_lines():
                            if '"error"' in line:
                                errors["event"] = errors.get("event", 0) + 1
                            elif line.startswith("data: {"):
                                got += 1
                    tokens += got
                    lat.append(time.monotonic() - t0)
                except httpx.HTTPError as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                j += 1

        async def main():
            limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
            async with httpx.AsyncClient(timeout=60, headers=AUTH, limits=limits) as c:
                until = time.monotonic() + seconds
                await asyncio.gather(*(client(c, i, until) for i in range(streams)))

        sampler.start()
        t0 = time.monotonic()
        asyncio.run(main())
        wall = time.monotonic() - t0
        time.sleep(1.5)  # one more sample, idle
        stop.set()
        sampler.join()
        time.sleep(6)  # past the 5 s keep-alive of both sides: idle sockets are closed
        idle_fds = proc_stats(serve.pid)[1]
        rss = [s[1] for s in samples]
        fds = [s[2] for s in samples]
        warm = len(rss) // 4  # growth is judged after the first quarter (imports, pools)
        return {"streams": streams, "seconds": round(wall, 1), "requests": len(lat),
                "errors": errors, "req_per_s": round(len(lat) / wall, 1),
                "latency_s": {"p50": pct(lat, .5), "p95": pct(lat, .95), "p99": pct(lat, .99)},
                "rss_mb": {"start": rss[warm] / 2**20, "end": rss[-1] / 2**20,
                           "max": max(rss) / 2**20},
                "rss_growth_after_warmup": rss[-1] / rss[warm] - 1.0,
                "fds": {"start": fds[warm], "end": fds[-1], "max": max(fds),
                        "after_idle": idle_fds}}
    finally:
        for p in (serve, fake):
            p.terminate()
            p.wait(30)


# ---------------------------------------------------------------------------- overhead

class _AiohttpLoop:
    """A direct loop on aiohttp: one event loop and one kept-alive session for the whole
    measurement, as a client program would hold them."""

    def __init__(self):
        import aiohttp

        self.loop = asyncio.new_event_loop()

        async def open_session():
            return aiohttp.ClientSession()

        self.session = self.loop.run_until_complete(open_session())

    def time(self, url: str, body: dict, tokens: int) -> float:
        async def run():
            t0 = time.perf_counter()
            for _ in range(tokens):
                async with self.session.post(url, json=body) as r:
                    r.raise_for_status()
                    await r.read()
            return time.perf_counter() - t0

        return self.loop.run_until_complete(run())

    def close(self) -> None:
        self.loop.run_until_complete(self.session.close())
        self.loop.close()


def overhead(repeats: int, tokens: int = 16) -> dict:
    """Direct: `tokens` sequential one-token calls to the fake upstream (what the loop would
    send), on httpx (the openai SDK's client) and on aiohttp (the proxy's client for a
    plain-HTTP upstream, the fastest common Python client); proxied: one `tokens`-token request
    through the proxy at beta 0, one token per call. Interleaved, so all see the same machine;
    the goal (<= 1.10x) is against the httpx loop, the aiohttp ratio is the stricter figure."""
    fake, upstream = start_fake()
    serve, url = start_serve(upstream)
    try:
        direct, direct_aio, proxied = [], [], []
        body = {"model": "m", "prompt": "overhead", "max_tokens": 1, "logprobs": 5,
                "temperature": 1.0}
        aio = _AiohttpLoop()
        with httpx.Client(timeout=60) as c:
            for _ in range(3):  # warm every path
                aio.time(f"{upstream}/completions", body, 1)
                c.post(f"{upstream}/completions", json=body)
                c.post(f"{url}/v1/completions", headers=AUTH,
                       json={"model": "m", "prompt": "w", "max_tokens": tokens})
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(tokens):
                    c.post(f"{upstream}/completions", json=body).raise_for_status()
                direct.append(time.perf_counter() - t0)
                direct_aio.append(aio.time(f"{upstream}/completions", body, tokens))
                t0 = time.perf_counter()
                r = c.post(f"{url}/v1/completions", headers=AUTH,
                           json={"model": "m", "prompt": "overhead", "max_tokens": tokens})
                r.raise_for_status()
                assert r.json()["usage"]["vas"]["upstream_calls"] == tokens
                proxied.append(time.perf_counter() - t0)
        aio.close()

        def ratio(base: list[float]) -> dict:
            rs = [p / d for p, d in zip(proxied, base)]
            return {"median": statistics.median(rs), "p10": pct(rs, .1), "p90": pct(rs, .9)}

        return {"tokens": tokens, "repeats": repeats,
                "direct_s": statistics.median(direct),
                "direct_aiohttp_s": statistics.median(direct_aio),
                "proxied_s": statistics.median(proxied),
                "ratio": ratio(direct), "ratio_vs_aiohttp": ratio(direct_aio),
                "overhead_ms_per_token": 1000 * (statistics.median(proxied)
                                                 - statistics.median(direct)) / tokens}
    finally:
        for p in (serve, fake):
            p.terminate()
            p.wait(30)


# ---------------------------------------------------------------------------- SIGKILL

def sigkill(tmp: Path) -> dict:
    """Seeded answers cached; then SIGKILL mid-stream; the restarted proxy's cache opens,
    passes diskcache's own check, and replays the seeded answer without an upstream call."""
    import diskcache

    from vas_proxy.upstream.cache import JSONTextDisk

    cache = tmp / "cache"
    fake, upstream = start_fake()
    try:
        serve, url = start_serve(upstream, "--cache", str(cache))
        seeded = {"model": "m", "prompt": "kept", "max_tokens": 8, "seed": 3}
        first = httpx.post(f"{url}/v1/completions", json=seeded, headers=AUTH, timeout=60).json()
        with httpx.stream("POST", f"{url}/v1/completions", headers=AUTH, timeout=60,
                          json={"model": "m", "prompt": "killed", "max_tokens": 4000,
                                "seed": 4, "stream": True}) as r:
            assert r.status_code == 200
            for i, _ in enumerate(r.iter_lines()):
                if i > 40:
                    serve.send_signal(signal.SIGKILL)  # mid-stream, mid-write likely
                    break
        assert serve.wait(30) == -signal.SIGKILL, "the proxy was not killed mid-stream"
        with diskcache.Cache(str(cache), disk=JSONTextDisk) as dc:
            problems = dc.check(fix=False)
            entries = len(dc)
        serve, url = start_serve(upstream, "--cache", str(cache))
        again = httpx.post(f"{url}/v1/completions", json=seeded, headers=AUTH, timeout=60).json()
        serve.terminate()
        serve.wait(30)
        return {"entries_after_kill": entries, "check_warnings": [str(w) for w in problems],
                "replayed_same_text": again["choices"][0]["text"] == first["choices"][0]["text"],
                "replay_upstream_calls": again["usage"]["vas"]["upstream_calls"],
                "replay_cache_hits": again["usage"]["vas"]["cache_hits"]}
    finally:
        fake.terminate()
        fake.wait(30)


# ---------------------------------------------------------------------------- wrap cycles

def wrap_cycles(n: int) -> dict:
    import openai

    import vas_proxy
    from vas_proxy.values.callable import CallableValue

    fake, upstream = start_fake()
    try:
        h = {"h": CallableValue(lambda p, cs: [0.0] * len(cs), "h")}

        def cycle():
            with vas_proxy.wrap(openai.OpenAI(base_url=upstream, api_key="x"), values=h,
                                chat_template="chatml", use_cache=False) as g:
                g.completions.create(model="m", prompt="p", max_tokens=2)

        cycle()  # warm: imports, pools that live for the process
        threads0, fds0 = threading.active_count(), len(os.listdir("/proc/self/fd"))
        for _ in range(n):
            cycle()
        time.sleep(0.5)
        threads1, fds1 = threading.active_count(), len(os.listdir("/proc/self/fd"))
        return {"cycles": n, "threads": [threads0, threads1], "fds": [fds0, fds1],
                "leaked_threads": threads1 - threads0, "leaked_fds": fds1 - fds0}
    finally:
        fake.terminate()
        fake.wait(30)


PARTS = ["load", "overhead", "sigkill", "wrap"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true", help="the CI version: smaller, quicker")
    ap.add_argument("--skip-tests", action="store_true", help="only the measurements")
    ap.add_argument("--only", choices=PARTS, nargs="+", default=PARTS,
                    help="run these measurements only (the figures file is written only for all)")
    args = ap.parse_args(argv)
    import tempfile

    out: dict = {"short": args.short}
    if not args.skip_tests:
        files = ["tests/test_fuzz.py", "tests/test_hostile.py", "tests/test_faults.py",
                 "tests/test_scale.py"]
        env = {**os.environ, "VAS_FUZZ_EXAMPLES": "60" if args.short else "500"}
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              *files], cwd=ROOT, env=env)
        out["tests_passed"] = rc == 0
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"load": lambda: load(16 if args.short else 64, 10 if args.short else 300),
                "overhead": lambda: overhead(5 if args.short else 300),
                "sigkill": lambda: sigkill(Path(tmp)), "wrap": lambda: wrap_cycles(50)}
        for part in args.only:
            out[part] = runs[part]()
            print(f"{part}:", json.dumps(out[part]), flush=True)
    if list(args.only) != PARTS:
        return 0 if out.get("tests_passed", True) else 1
    dest = ROOT / "docs" / "bench" / f"reliability{'_short' if args.short else ''}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {dest.relative_to(ROOT)}")
    return 0 if out.get("tests_passed", True) else 1


if __name__ == "__main__":
    sys.exit(main())
