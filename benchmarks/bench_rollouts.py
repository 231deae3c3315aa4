"""Rollouts per minute for `vas-proxy train`, before and after: the embedded llama-cpp-python
(one slot, 2 requests in flight: what `train` used until issue 13) against the embedded
llama-server with as many slots as requests in flight (what `train` uses now), side by side,
repeats interleaved, through train's own sampler (`sample_rollouts`), logprobs on and off.

    python benchmarks/bench_rollouts.py --json docs/bench/rollouts.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETUPS = {"llama-cpp-python, 1 slot, 2 in flight": ("llama-cpp-python", 1, 2),
          "llama-server, 4 slots, 4 in flight": ("llama-server", 4, 4)}


async def one_setup(server, slots, concurrency, items, template, a) -> dict:
    from vas_proxy.train.rollouts import JsonlStore, Rollout, sample_rollouts
    from vas_proxy.upstream.client import UpstreamClient
    from vas_proxy.upstream.local import LocalUpstream

    out = {True: [], False: []}
    with LocalUpstream(server=server, slots=slots) as up, tempfile.TemporaryDirectory() as tmp:
        client = UpstreamClient(up.base_url, up.model, profile=up.profile, use_cache=False)
        try:
            for rep in range(a.repeats):
                for logprobs in (True, False):
                    store = JsonlStore(Path(tmp) / f"{rep}{logprobs}.jsonl", Rollout)
                    t0 = time.perf_counter()
                    rs = await sample_rollouts(client, items, samples=1, max_tokens=a.max_tokens,
                                               seed=2000 + rep, stop=template.stop_strings,
                                               store=store, concurrency=concurrency,
                                               progress=False, top_k=int(logprobs))
                    out[logprobs].append(60 * len(rs) / (time.perf_counter() - t0))
        finally:
            await client.aclose()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", default=str(ROOT / "data/prompts/everyday.jsonl"))
    ap.add_argument("--rollouts", type=int, default=16, help="responses per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--json")
    a = ap.parse_args()
    from vas_proxy.assets import smollm2_gguf
    from vas_proxy.templates import from_gguf
    from vas_proxy.train.prompts import read_prompts, render_prompts

    template = from_gguf(str(smollm2_gguf()))
    items = render_prompts(read_prompts(a.prompts), template)[:a.rollouts]
    results = {}
    for name, (server, slots, conc) in SETUPS.items():  # one server at a time: no contention
        results[name] = asyncio.run(one_setup(server, slots, conc, items, template, a))
    first = next(iter(results))
    print(f"rollouts per minute ({a.rollouts} x {a.max_tokens} tokens, {a.repeats} repeats, "
          "median [min-max]):\n\n| setup | with logprobs | text only | × the first |")
    print("|---|---:|---:|---:|")
    summary = {}
    for name, r in results.items():
        med = {k: statistics.median(v) for k, v in r.items()}
        summary[name] = {"with_logprobs": r[True], "text_only": r[False]}
        print(f"| {name} | {med[True]:.1f} [{min(r[True]):.1f}-{max(r[True]):.1f}] | "
              f"{med[False]:.1f} [{min(r[False]):.1f}-{max(r[False]):.1f}] | "
              f"{med[True] / statistics.median(results[first][True]):.1f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "per_minute": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
