"""Proxy overhead and throughput of `vas-proxy serve` (issue: the two faces of one engine).

1. Overhead per token at beta = 0: the service's one-token loop (openai SDK → uvicorn → engine →
   upstream) against the same one-token loop calling the upstream directly, side by side.
2. Throughput (tokens/s) at 1, 4 and 16 concurrent streaming requests with guidance on
   (beta = 1, the documented heuristic value), through the service.

    python benchmarks/bench_service.py --tokens 24 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx2 as httpx
import openai
import uvicorn

from vas_proxy.assets import smollm2_gguf
from vas_proxy.engine import Engine
from vas_proxy.guidance import Guidance
from vas_proxy.options import HEURISTIC_VALUE
from vas_proxy.runtime import Runtime
from vas_proxy.service.app import create_app
from vas_proxy.templates import from_gguf
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.upstream.local import LocalUpstream, free_port
from vas_proxy.values.loader import load_value

PROMPTS = ["Tell me about your weekend plans.", "How do I make a cup of tea?",
           "Describe a rainy Monday.", "What should I cook tonight?"]


def direct_loop(base_url: str, model: str, prompt: str, tokens: int) -> float:
    """The naive loop without the proxy: one upstream call per token, greedy choice."""
    text = ""
    with httpx.Client(timeout=120) as http:
        t0 = time.perf_counter()
        for _ in range(tokens):
            r = http.post(f"{base_url}/completions", json={
                "model": model, "prompt": prompt + text, "max_tokens": 1, "logprobs": 20,
                "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
                "repeat_penalty": 1.0, "seed": 0}).json()
            top = r["choices"][0]["logprobs"]["top_logprobs"]
            if not top:
                break
            text += max(top[0], key=top[0].get)
        return (time.perf_counter() - t0) / tokens


def fmt(xs):
    return f"{statistics.median(xs) * 1000:7.1f} ms/token [{min(xs) * 1000:.1f}-{max(xs) * 1000:.1f}]"


async def concurrent(url: str, model: str, n: int, tokens: int) -> float:
    async def one(client, i):
        got = 0
        async with client.stream("POST", f"{url}/v1/completions", json={
                "model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": tokens,
                "seed": i, "stream": True, "stream_options": {"include_usage": True}}) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {") and '"usage"' in line:
                    got = json.loads(line[6:])["usage"]["completion_tokens"]
        return got

    async with httpx.AsyncClient(timeout=600) as client:
        t0 = time.perf_counter()
        counts = await asyncio.gather(*(one(client, i) for i in range(n)))
        return sum(counts) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    tpl = from_gguf(str(smollm2_gguf()))
    out = {}
    with LocalUpstream() as up:
        engine = Engine(UpstreamClient(up.base_url, up.model, use_cache=False),
                        {"positivity": load_value(HEURISTIC_VALUE, name="positivity")},
                        defaults=Guidance(beta=0.0), eos_texts=tpl.stop_strings)
        app = create_app(Runtime(engine, tpl, up.model, up.base_url))
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
        import threading
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        direct, proxy = [], []
        for rep in range(a.repeats):
            for prompt in PROMPTS[:2]:
                raw = tpl.render([{"role": "user", "content": prompt}])
                direct.append(direct_loop(up.base_url, up.model, raw, a.tokens))
                t0 = time.perf_counter()
                r = sdk.completions.create(model=up.model, prompt=raw, max_tokens=a.tokens,
                                           temperature=0, seed=0, extra_body={"vas": {"beta": 0}})
                proxy.append((time.perf_counter() - t0) / max(1, r.usage.completion_tokens))
        ratio = statistics.median(proxy) / statistics.median(direct)
        print(f"direct one-token loop : {fmt(direct)}")
        print(f"through vas-proxy     : {fmt(proxy)}")
        print(f"overhead ratio (median proxy / median direct): {ratio:.3f}")
        out["direct_s_per_token"], out["proxy_s_per_token"], out["ratio"] = direct, proxy, ratio
        engine.defaults = Guidance(beta=1.0)
        for n in (1, 4, 16):
            tps = [asyncio.run(concurrent(url, up.model, n, a.tokens)) for _ in range(a.repeats)]
            print(f"{n:2d} concurrent streams (beta=1): {statistics.median(tps):6.2f} tokens/s "
                  f"[{min(tps):.2f}-{max(tps):.2f}]", flush=True)
            out[f"throughput_{n}"] = tps
        server.should_exit = True
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
