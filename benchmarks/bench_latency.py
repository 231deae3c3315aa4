"""Latency of a guided response against what the user would otherwise wait for, side by side.

On the embedded upstream (llama-cpp-python's server on SmolLM2, CPU; `--embedded llama-server`
for llama.cpp's own), 64-token responses to
held-out prompts, each prompt running every variant in turn (so load drifts hit them alike):

- `guided`: the engine at --beta with the bundled positivity value model and its defaults:
  adaptive speculation (the llamacpp profile's drafts are exact), drafted calls read as
  streams so scoring overlaps generation (`Engine(overlap=None)`: on for llamacpp);
- `guided, whole calls`: the same without the overlap (`overlap=False`);
- `guided, whole calls, batched`: and each chunk's drafted positions scored in one forward
  (`batch_drafts=True`);
- `beta 0`: the same loop without scoring (ratio a: the scoring overhead);
- `plain call`: ONE completion call of 64 tokens without logprobs (ratio b: what a user
  would otherwise wait for);
- `plain call + logprobs`: the same call asking top-20 logprobs: the upstream's own price of
  reporting them (llama-cpp-python sorts the 49k-token vocabulary in Python per position).

Latencies are per generated token (responses may end early at the end of turn). Ratios are
per prompt and repeat, then summarised as median (p10-p90).

    python benchmarks/bench_latency.py --prompts 4 --repeats 2 --json docs/bench/latency_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import numpy as np

from vas_proxy.engine import Engine, GenerationRequest
from vas_proxy.guidance import Guidance
from vas_proxy.runtime import Options, open_runtime
from vas_proxy.options import CacheOptions, GuidanceOptions, UpstreamOptions
from vas_proxy.train.prompts import read_prompts, render_prompts

PROMPTS = Path(__file__).resolve().parents[1] / "data/prompts/everyday_heldout.jsonl"


def spread(xs: list[float]) -> str:
    a = np.asarray(xs)
    return f"{np.median(a):.3f} ({np.percentile(a, 10):.3f}-{np.percentile(a, 90):.3f})"


async def run(args) -> dict:
    opts = Options(guidance=GuidanceOptions(values={"pos": "bundled:positivity"}),
                   cache=CacheOptions(use_cache=False), verbose=False,
                   upstream=UpstreamOptions(embedded=args.embedded))
    per_token: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    calls: dict[str, list[float]] = {}
    async with open_runtime(opts) as rt:
        prompts = render_prompts(read_prompts(str(PROMPTS))[:args.prompts], rt.template)
        base = rt.engine
        whole = Engine(base.upstream, base.values, defaults=base.defaults,
                       eos_texts=sorted(base.eos_texts), overlap=False)
        batched = Engine(base.upstream, base.values, defaults=base.defaults,
                         eos_texts=sorted(base.eos_texts), overlap=False, batch_drafts=True)
        up = base.upstream
        stop = rt.template.stop_strings

        async def guided(engine, p, seed, beta, speculate=None):
            g = Guidance(beta=beta, top_k=20, speculate=speculate)
            t0 = time.perf_counter()
            gen = await engine.generate(GenerationRequest(prompt=p.upstream,
                                                          max_tokens=args.tokens, seed=seed,
                                                          guidance=g))
            return time.perf_counter() - t0, max(1, gen.usage.completion_tokens), \
                gen.usage.upstream_calls

        async def plain(p, seed, top_k):
            t0 = time.perf_counter()
            res = await up.complete(p.upstream, max_tokens=args.tokens, top_k=top_k,
                                    seed=seed, stop=stop, cache=False)
            return time.perf_counter() - t0, max(1, res.completion_tokens), 1

        variants = {
            "guided": lambda p, s: guided(base, p, s, args.beta),
            "guided, whole calls": lambda p, s: guided(whole, p, s, args.beta),
            "guided, whole calls, batched": lambda p, s: guided(batched, p, s, args.beta),
            "beta 0": lambda p, s: guided(base, p, s, 0.0),
            "plain call": lambda p, s: plain(p, s, 0),
            "plain call + logprobs": lambda p, s: plain(p, s, 20),
        }
        await plain(prompts[0], 0, 20)  # warm the server
        for rep in range(args.repeats):
            for p in prompts:
                seed = 1000 * rep + p.index
                got = {}
                for name, fn in variants.items():
                    dt, n, c = await fn(p, seed)
                    got[name] = dt / n
                    per_token.setdefault(name, []).append(dt / n)
                    calls.setdefault(name, []).append(c)
                for name in variants:
                    if name.startswith("guided"):
                        ratios.setdefault(f"(a) {name} / beta 0", []).append(
                            got[name] / got["beta 0"])
                        ratios.setdefault(f"(b) {name} / plain call", []).append(
                            got[name] / got["plain call"])
                ratios.setdefault("floor: plain + logprobs / plain", []).append(
                    got["plain call + logprobs"] / got["plain call"])
                print(f"prompt {p.index} rep {rep}: " + ", ".join(
                    f"{k} {v * 1000:.0f} ms/token" for k, v in got.items()), flush=True)
    print(f"\nseconds per token, median (p10-p90) over {len(per_token['guided'])} responses "
          f"of up to {args.tokens} tokens:")
    for name, xs in per_token.items():
        print(f"  {name:32s} {spread(xs)}  upstream calls {statistics.median(calls[name]):.0f}")
    print("ratios (per prompt and repeat), median (p10-p90):")
    for name, xs in ratios.items():
        print(f"  {name:48s} {spread(xs)}")
    return {"args": vars(args) | {"json": str(args.json)}, "seconds_per_token": per_token,
            "upstream_calls": calls, "ratios": ratios}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--beta", type=float, default=4.0)
    p.add_argument("--json", type=Path)
    p.add_argument("--embedded", default="llama-cpp-python",
                   help="the embedded server: llama-cpp-python (the figures in the issue) or "
                        "llama-server")
    args = p.parse_args()
    res = asyncio.run(run(args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
