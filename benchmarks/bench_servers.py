"""llama.cpp's C++ server vs llama-cpp-python's, side by side in one run (docs/bench/servers.json):
latency of one guided-loop call (1 token, top-20 logprobs, a prompt that grows by one token),
throughput at 1/2/4 concurrent requests, determinism of the reported logprobs (the same call
after other traffic: prefix cache, batching with a concurrent request), and re-tokenisation
drift (how often the upstream's tokens of prompt + answer text differ from the chosen tokens).

    python benchmarks/bench_servers.py [--calls 60] [--out docs/bench/servers.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from vas_proxy.assets import smollm2_gguf
from vas_proxy.engine import Engine, GenerationRequest
from vas_proxy.guidance import Guidance
from vas_proxy.templates import from_gguf
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.upstream.continuation import TokenPrompt
from vas_proxy.upstream.local import LocalUpstream

PROMPTS = ["Say hello in five words.", "Name a colour.", "Describe the sea.",
           "Give me a tip for sleeping well.", "What is a good name for a cat?",
           "Write one line about autumn.", "Why is the sky blue?", "Suggest a breakfast."]


def q(xs):
    xs = sorted(xs)
    return {"median": statistics.median(xs), "p10": xs[len(xs) // 10],
            "p90": xs[(9 * len(xs)) // 10]}


async def latency(c: UpstreamClient, prompt: str, calls: int) -> list[float]:
    out, text = [], prompt
    for i in range(calls):
        t0 = time.perf_counter()
        res = await c.complete(text, max_tokens=1, top_k=20, seed=i, cache=False)
        out.append(time.perf_counter() - t0)
        text += res.text or " "
    return out


async def throughput(c: UpstreamClient, prompts: list[str], conc: int, tokens: int) -> float:
    t0 = time.perf_counter()
    n = 0

    async def one(p, s):
        nonlocal n
        res = await c.complete(p, max_tokens=tokens, top_k=20, seed=s, cache=False)
        n += len(res.positions)
    for start in range(0, len(prompts), conc):
        await asyncio.gather(*(one(p, s) for s, p in enumerate(prompts[start:start + conc])))
    return n / (time.perf_counter() - t0)


async def determinism(c: UpstreamClient, prompt: str) -> dict:
    """Max |Δ logprob| of the same call: alone, after other prompts (prefix cache), and beside
    a concurrent request (batching)."""
    async def lps():
        res = await c.complete(prompt, max_tokens=4, top_k=20, seed=1, cache=False)
        return [[x.logprob for x in p.candidates] for p in res.positions]

    def diff(a, b):
        return max(abs(x - y) for pa, pb in zip(a, b) for x, y in zip(pa, pb))
    base = await lps()
    await c.complete(prompt[:-8] + " other text", max_tokens=8, top_k=0, seed=2, cache=False)
    after = await lps()
    concurrent, _ = await asyncio.gather(lps(), c.complete(PROMPTS[3], max_tokens=16, top_k=20,
                                                           seed=3, cache=False))
    return {"after_other_prompt": diff(base, after), "beside_concurrent": diff(base, concurrent)}


async def drift(c: UpstreamClient, prompts: list[str], tokens: int) -> dict:
    """Guided-loop answers at beta 0 through token ids; then, at each step, whether the
    upstream's own tokens of (prompt + answer text so far) end with the chosen tokens."""
    eng = Engine(c, {}, defaults=Guidance(beta=0.0, speculate=0))
    steps = differ = 0
    for i, text in enumerate(prompts):
        ids = await c.tokenize(text)
        gen = await eng.generate(GenerationRequest(
            prompt=text, upstream_prompt=TokenPrompt(tuple(ids), text), max_tokens=tokens,
            seed=i))
        chosen = [ev.candidates[[x.bytes for x in ev.candidates].index(ev.token)].id
                  for ev in gen.tokens if ev.token]
        acc = b""
        for j, ev in enumerate(gen.tokens[:len(chosen)]):
            acc += ev.token
            try:
                shown = acc.decode("utf-8")
            except UnicodeDecodeError:
                continue  # mid-character: a text prompt cannot even say it
            steps += 1
            again = await c.tokenize(text + shown)
            differ += again != ids + chosen[:j + 1]
    return {"steps": steps, "differ": differ, "fraction": differ / max(1, steps)}


async def measure(up: LocalUpstream, calls: int, tpl) -> dict:
    prompts = [tpl.render([{"role": "user", "content": p}]) for p in PROMPTS]
    async with UpstreamClient(up.base_url, up.model, profile=up.profile, use_cache=False) as c:
        await latency(c, prompts[0], 5)  # warm-up
        out = {"latency_s": q(await latency(c, prompts[0], calls)),
               "tokens_per_s": {str(n): await throughput(c, prompts, n, 8) for n in (1, 2, 4)},
               "determinism_max_abs_dlogprob": await determinism(c, prompts[1])}
        if c.profile.tokenizer_routes:
            out["drift_text_vs_tokens"] = await drift(c, prompts * 4, 64)
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument("--out", default="docs/bench/servers.json")
    a = ap.parse_args()
    tpl = from_gguf(str(smollm2_gguf()))
    result = {}
    for server, slots in (("llama-cpp-python", 1), ("llama-server", 4)):
        with LocalUpstream(server=server, slots=slots) as up:
            result[f"{server} ({slots} slot{'s' if slots > 1 else ''})"] = asyncio.run(
                measure(up, a.calls, tpl))
    a_, b_ = result.values()
    result["ratio_latency_llama_server_over_llama_cpp_python"] = (
        b_["latency_s"]["median"] / a_["latency_s"]["median"])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
