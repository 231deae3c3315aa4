"""Per-token latency of the guided loop, split into upstream time and value-scoring time.

Runs the real engine against the embedded llama.cpp upstream (SmolLM2) with a SmolLM2-backbone
value model (CPU by default), on short prompts and on a ~256-token prompt. Prints medians with
min-max spreads over prompts, and the scoring/upstream ratio side by side (goal: scoring per step
no more than the upstream round trip at 256 tokens of context).

    python benchmarks/bench_loop.py --tokens 32 --json .bench/loop.json
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
from vas_proxy.upstream.local import LocalUpstream
from vas_proxy.values.model import build_value_model
from vas_proxy.values.scorer import CheckpointValue

SHORT = ["Tell me about your weekend plans.", "How do I make a cup of tea?",
         "Describe a rainy Monday.", "What should I cook tonight?"]
CONTEXT = ("Here are my notes from this week. " + "The team met on Monday to review the plan, "
           "agreed on the budget, and split the work between design and testing. " * 12)


def summary(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:7.1f} ms [{min(xs) * 1000:.1f}-{max(xs) * 1000:.1f}]"


async def run(args) -> dict:
    tpl = from_gguf(str(smollm2_gguf()))
    model, tok = build_value_model("smollm2", lora_r=0, dtype=args.dtype)
    model.to(args.device)
    value = CheckpointValue(model, tok, "bench")
    results = {}
    with LocalUpstream() as up:
        client = UpstreamClient(up.base_url, up.model, use_cache=False)
        engine = Engine(client, {"bench": value}, eos_texts=tpl.stop_strings)
        for label, prompts in [("short prompts", SHORT),
                               ("~256-token context", [CONTEXT + q for q in SHORT[:2]])]:
            for beta in (0.0, 1.0):
                per_tok, up_tok, sc_tok = [], [], []
                ctx_tokens = []
                for i, p in enumerate(prompts):
                    req = GenerationRequest(prompt=tpl.render([{"role": "user", "content": p}]),
                                            max_tokens=args.tokens, seed=i,
                                            guidance=Guidance(beta=beta, top_k=20))
                    t0 = time.perf_counter()
                    g = await engine.generate(req)
                    n = max(1, g.usage.completion_tokens)
                    per_tok.append((time.perf_counter() - t0) / n)
                    up_tok.append(g.usage.upstream_seconds / n)
                    sc_tok.append(g.usage.scoring_seconds / n)
                    ctx_tokens.append(g.usage.upstream_prompt_tokens / g.usage.upstream_calls)
                key = f"{label} beta={beta}"
                results[key] = {"per_token_s": per_tok, "upstream_s": up_tok, "scoring_s": sc_tok,
                                "mean_context_tokens": statistics.mean(ctx_tokens)}
                print(f"{key:32s} ctx≈{statistics.mean(ctx_tokens):5.0f} tok | "
                      f"total {summary(per_tok)} | upstream {summary(up_tok)} | "
                      f"scoring {summary(sc_tok)} | scoring/upstream "
                      f"{statistics.median(sc_tok) / statistics.median(up_tok):.2f}", flush=True)
        await client.aclose()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    res = asyncio.run(run(args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
