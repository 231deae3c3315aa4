"""The whole-sequence check of the guided loop at β = 0: per continuation strategy, 512 answers
through the loop (one token per call) against 512 of the upstream's own samples of the same
prompts (one call each), on the embedded llama-server. If the loop samples what the model
samples, their sequence statistics agree: answer length (KS), how often the answer ends before
the limit (chi-square), the first character (chi-square, rare ones pooled), the vader reward
(KS). Fixed before running: prompts, seeds 0..63 per prompt, 16 tokens, these four tests,
p < 0.001 to call a difference.

Two references: the upstream sampling its whole vocabulary (top_k 0, the model itself) and the
upstream truncated to the same top-20 the loop sees (top_k 20, what the loop claims to sample
at beta 0). The second reference was added after a pilot (n = 32), to test the suspected cause
of the README lead: the loop never samples outside the top-k.

    python benchmarks/drift_sequences.py [--n 512] [--out docs/bench/drift_sequences.json]
                                         [--resume] [--server llama-cpp-python]

On llama-cpp-python (added after the llama-server run, to find the README lead, which was seen
there): its one strategy, completions, with "" told apart as now and ending the answer as
before.

Each part is written as it finishes; --resume keeps the parts already in --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import stats

from vas_proxy.assets import smollm2_gguf
from vas_proxy.engine import Engine, GenerationRequest
from vas_proxy.guidance import Guidance
from vas_proxy.prompting import PromptBuilder
from vas_proxy.rewards import load_reward
from vas_proxy.templates import from_gguf, from_props
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.upstream.local import LocalUpstream

PROMPTS = ["Say hello in five words.", "Name a colour.", "Describe the sea.",
           "Give me a tip for sleeping well.", "What is a good name for a cat?",
           "Write one line about autumn.", "Why is the sky blue?", "Suggest a breakfast."]
TOKENS = 16
TOP_K = 20


def compare(a: list[dict], b: list[dict]) -> dict:
    def ks(key):
        return stats.ks_2samp([x[key] for x in a], [x[key] for x in b]).pvalue

    def table(key):
        ca, cb = Counter(x[key] for x in a), Counter(x[key] for x in b)
        keys = [k for k in set(ca) | set(cb) if ca[k] + cb[k] >= 10]
        rows = [[ca[k] for k in keys] + [sum(ca.values()) - sum(ca[k] for k in keys)],
                [cb[k] for k in keys] + [sum(cb.values()) - sum(cb[k] for k in keys)]]
        rows = [r[:-1] for r in rows] if rows[0][-1] + rows[1][-1] == 0 else rows
        return float(stats.chi2_contingency(rows).pvalue) if len(rows[0]) > 1 else 1.0
    return {"length_chars_ks_p": ks("chars"), "ended_chi2_p": table("ended"),
            "first_char_chi2_p": table("first"), "vader_ks_p": ks("vader"),
            "mean_vader": [float(np.mean([x["vader"] for x in a])),
                           float(np.mean([x["vader"] for x in b]))],
            "ended_rate": [float(np.mean([x["ended"] for x in a])),
                           float(np.mean([x["ended"] for x in b]))]}


class EndsOnEmpty(Engine):
    """The loop as it was before a chosen legacy "" was told apart: it ends the answer."""
    RESOLVE_TRIES = 0


async def run(n: int, out_path: Path, resume: bool, server: str) -> dict:
    vader = load_reward("vader")
    with LocalUpstream(server=server, slots=4 if server == "llama-server" else 1) as up:
        async with UpstreamClient(up.base_url, up.model, profile=up.profile,
                                  use_cache=False) as c:
            tpl = from_props(await c.props()) or from_gguf(str(smollm2_gguf()))
            jobs = [(PROMPTS[i % len(PROMPTS)], i // len(PROMPTS)) for i in range(n)]
            gate = asyncio.Semaphore(4)

            async def own(prompt, seed, sampler_top_k):  # the upstream's own sample: one call
                async with gate:
                    res = await c.complete(tpl.render([{"role": "user", "content": prompt}]),
                                           max_tokens=TOKENS, top_k=0, seed=seed, cache=False,
                                           extra={"top_k": sampler_top_k})
                return res.text, res.finish_reason == "stop", res.text[:1]

            async def loop(builder, eng, prompt, seed):
                async with gate:
                    p = await builder.chat([{"role": "user", "content": prompt}])
                    g = await eng.generate(GenerationRequest(
                        prompt=p.text, upstream_prompt=p.upstream, max_tokens=TOKENS,
                        seed=seed))
                return g.text, g.finish_reason == "stop", g.text[:1]

            def records(outs):
                texts = [o[0] for o in outs]
                scores = vader([j[0] for j in jobs], texts)
                return [{"chars": len(t), "ended": e, "first": f, "vader": float(v)}
                        for (t, e, f), v in zip(outs, scores)]

            out = {"n": n, "tokens": TOKENS, "top_k": TOP_K}
            if resume and out_path.exists():
                out = json.loads(out_path.read_text())
                if (out.get("n"), out.get("tokens")) != (n, TOKENS):
                    raise SystemExit(f"{out_path} holds another run; drop --resume")
            samples = out.setdefault("samples", {})

            async def part(name, make):
                if name not in samples:
                    samples[name] = records(await asyncio.gather(*make()))
                    out_path.write_text(json.dumps(out, indent=1))
                return samples[name]

            full = await part("own_top_k_0", lambda: (own(p, s, 0) for p, s in jobs))
            trunc = await part("own_top_k_20", lambda: (own(p, 500 + s, TOP_K) for p, s in jobs))
            out["own_top_k_20_vs_own_top_k_0"] = compare(trunc, full)
            g = Guidance(beta=0.0, speculate=0, top_k=TOP_K)
            variants = [(s, Engine) for s in c.profile.strategies]
            if server == "llama-cpp-python":
                variants.append(("completions, ending on \"\"", EndsOnEmpty))
            for strategy, kind in variants:
                eng = kind(c, {}, defaults=g)
                builder = PromptBuilder(c, tpl, strategy.split(",")[0])
                got = await part(f"loop_{strategy}", lambda: (
                    loop(builder, eng, p, 1000 + s) for p, s in jobs))
                out[strategy] = {"vs_own_top_k_0": compare(got, full),
                                 "vs_own_top_k_20": compare(got, trunc)}
                print(strategy, json.dumps(out[strategy]), flush=True)
            out_path.write_text(json.dumps(out, indent=1))
            return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--out", default="docs/bench/drift_sequences.json")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--server", default="llama-server", choices=["llama-server",
                                                                 "llama-cpp-python"])
    a = ap.parse_args()
    asyncio.run(run(a.n, Path(a.out), a.resume, a.server))


if __name__ == "__main__":
    main()
