"""Upstream cost of guided generation: naive one-token-per-call vs exact speculative steps.

For each beta and each mode (naive, L = 2, 4, 8, adaptive) generates the same prompts with the
same seeds and reports, per generated token: upstream calls, billed prompt tokens, billed
completion tokens (drafts included), and wall time; plus the draft acceptance rate. Nobody
publishes acceptance rates for a value-tilted target: these are ours.

    python benchmarks/bench_speculative.py --prompts 16 --tokens 64 --value bundled:positivity
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
from vas_proxy.options import default_value_specs
from vas_proxy.templates import from_gguf
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.upstream.local import LocalUpstream
from vas_proxy.values.loader import load_value

PROMPTS = [
    "Tell me about your weekend plans.", "How do I make a cup of tea?",
    "Describe a rainy Monday.", "What should I cook tonight?", "Write a note to a neighbour.",
    "How was your day?", "Give me advice for a job interview.", "Describe your hometown.",
    "What do you think about winter?", "Tell me a short story about a cat.",
    "How do I fix a flat bike tyre?", "Write a review of a small cafe.",
    "What is a good way to start the morning?", "Describe the last film you saw.",
    "How should I spend a free afternoon?", "Write a message to a friend who moved away.",
    "What makes a good teacher?", "Describe a busy train station.",
    "How do I keep houseplants alive?", "Tell me about the sea.",
]
MODES = {"naive": 0, "L=2": 2, "L=4": 4, "L=8": 8, "adaptive": -1}


async def run(args) -> list[dict]:
    tpl = from_gguf(str(smollm2_gguf()))
    spec = args.value or next(iter(default_value_specs().values()))
    value = load_value(spec, name="v")
    rows = []
    with LocalUpstream() as up:
        client = UpstreamClient(up.base_url, up.model, use_cache=False)
        engine = Engine(client, {"v": value}, eos_texts=tpl.stop_strings, draft=args.draft)
        prompts = [tpl.render([{"role": "user", "content": p}])
                   for p in PROMPTS[:args.prompts]]
        for beta in args.betas:
            for mode in args.modes:
                g = Guidance(beta=beta, top_k=20, speculate=MODES[mode])
                calls = ptoks = ctoks = toks = rejected = trials = accepted = 0
                wall = []
                for i, p in enumerate(prompts):
                    t0 = time.perf_counter()
                    r = await engine.generate(GenerationRequest(prompt=p, max_tokens=args.tokens,
                                                                seed=i, guidance=g))
                    u = r.usage
                    wall.append((time.perf_counter() - t0) / max(1, u.completion_tokens))
                    calls += u.upstream_calls
                    ptoks += u.upstream_prompt_tokens
                    ctoks += u.upstream_completion_tokens
                    toks += u.completion_tokens
                    rejected += u.rejected_draft_tokens
                    trials += u.draft_trials
                    accepted += u.drafts_accepted
                row = {"beta": beta, "mode": mode, "tokens": toks,
                       "calls_per_token": calls / toks, "prompt_tokens_per_token": ptoks / toks,
                       "completion_tokens_per_token": ctoks / toks,
                       "acceptance": accepted / trials if trials else None,
                       "wasted_drafts_per_token": rejected / toks,
                       "wall_s_per_token_median": statistics.median(wall),
                       "wall_s_per_token_min": min(wall), "wall_s_per_token_max": max(wall)}
                rows.append(row)
                acc = f"{row['acceptance']:.2f}" if row["acceptance"] is not None else "  - "
                print(f"| {beta:4.1f} | {mode:8s} | {toks:5d} | {row['calls_per_token']:.3f} | "
                      f"{row['prompt_tokens_per_token']:7.1f} | "
                      f"{row['completion_tokens_per_token']:.2f} | {acc} | "
                      f"{row['wall_s_per_token_median'] * 1000:6.0f} "
                      f"[{row['wall_s_per_token_min'] * 1000:.0f}-"
                      f"{row['wall_s_per_token_max'] * 1000:.0f}] |", flush=True)
        await client.aclose()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--betas", type=lambda s: [float(x) for x in s.split(",")],
                   default=[0.0, 1.0, 2.0, 4.0])
    p.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES))
    p.add_argument("--value", help="value SPEC (default: the bundled demo value model)")
    p.add_argument("--draft", choices=["sample", "greedy"], help="default: from the profile")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    print("| beta | mode     | tokens | calls/token | billed prompt tok/token | "
          "billed completion tok/token | draft acceptance α | wall ms/token median [min-max] |")
    print("|---|---|---|---|---|---|---|---|")
    rows = asyncio.run(run(args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
