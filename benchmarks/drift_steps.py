"""Re-tokenisation drift per continuation strategy, on the embedded llama-server: 32 prompts, one
beta-0 answer of 64 tokens each through token ids (the path actually sampled), and at every step
whether the upstream's own tokens of what each strategy would send end with the chosen tokens:

- text (`completions`): the rendered prompt + the answer so far, as text;
- chat prefill (`chat`): the upstream's template applied to the user message plus a trailing
  assistant message holding the answer so far (what llama-server continues), tokenised;
- token ids (`tokens`): the ids themselves (no drift by construction; counted as the control).

Where the text path drifts, the next position's top-20 is read through both prompts and the total
variation distance between the two renormalised distributions reported (and, as a control, at as
many steps that did not drift). Fixed before running: these prompts, seeds 0..31, 64 tokens.

    python benchmarks/drift_steps.py [--out docs/bench/drift_steps.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path

import numpy as np

from vas_proxy.engine import Engine, GenerationRequest
from vas_proxy.guidance import Guidance
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.upstream.continuation import TokenPrompt
from vas_proxy.upstream.local import LocalUpstream

PROMPTS = [
    "Say hello in five words.", "Name a colour.", "Describe the sea.",
    "Give me a tip for sleeping well.", "What is a good name for a cat?",
    "Write one line about autumn.", "Why is the sky blue?", "Suggest a breakfast.",
    "Explain what a verb is.", "List three fruits.", "Write a haiku about rain.",
    "What does a baker do?", "Tell me a fun fact about owls.", "How do I boil an egg?",
    "Describe your ideal weekend.", "What is 12 times 7?", "Give me a word that rhymes with moon.",
    "Write a short thank-you note.", "What is the capital of France?", "Reply with one emoji.",
    "Describe a city at night.", "What should I pack for a beach trip?",
    "Translate 'good morning' into Spanish.", "Invent a name for a new planet.",
    "Why do leaves change colour?", "Give me a motivational sentence.",
    "What is a prime number?", "Describe the taste of lemon.", "Write a title for a mystery novel.",
    "How many legs does a spider have?", "Suggest a hobby for a rainy day.",
    "Write a sentence using the word 'quiet'.",
]
TOKENS = 64


def tv(a: list, b: list) -> float:
    """Total variation between two top-k lists of candidates, each renormalised, keyed by id."""
    def dist(cands):
        p = np.exp([c.logprob for c in cands])
        return dict(zip((c.id for c in cands), p / p.sum()))
    pa, pb = dist(a), dist(b)
    return 0.5 * sum(abs(pa.get(k, 0.0) - pb.get(k, 0.0)) for k in set(pa) | set(pb))


async def run() -> dict:
    with LocalUpstream(server="llama-server", slots=1) as up:
        async with UpstreamClient(up.base_url, up.model, profile=up.profile,
                                  use_cache=False) as c:
            eng = Engine(c, {}, defaults=Guidance(beta=0.0, speculate=0))
            steps = 0
            differ = {"text": [], "chat": [], "tokens": []}
            control = []
            for i, question in enumerate(PROMPTS):
                user = [{"role": "user", "content": question}]
                text = await c.apply_template(user)
                ids = await c.tokenize(text)
                gen = await eng.generate(GenerationRequest(
                    prompt=text, upstream_prompt=TokenPrompt(tuple(ids), text),
                    max_tokens=TOKENS, seed=i))
                chosen = [ev.candidates[[x.bytes for x in ev.candidates].index(ev.token)].id
                          for ev in gen.tokens if ev.token]
                acc = b""
                for j, ev in enumerate(gen.tokens[:len(chosen)]):
                    acc += ev.token
                    try:
                        shown = acc.decode("utf-8")
                    except UnicodeDecodeError:
                        continue  # mid-character: text and chat cannot even say it
                    steps += 1
                    path = ids + chosen[:j + 1]
                    chat = await c.apply_template(user + [{"role": "assistant",
                                                           "content": shown}])
                    seen = {"text": await c.tokenize(text + shown),
                            "chat": await c.tokenize(chat), "tokens": list(path)}
                    for name, toks in seen.items():
                        if toks != path:
                            differ[name].append((i, j, text + shown, path))
                    if seen["text"] == path and len(control) < 40 and j % 7 == 3:
                        control.append((i, j, text + shown, path))

            async def distance(case):
                _, _, as_text, path = case
                a = (await c.complete(as_text, max_tokens=1, top_k=20, seed=0)).positions
                b = (await c.complete(path, max_tokens=1, top_k=20, seed=0)).positions
                return tv(a[0].candidates, b[0].candidates) if a and b else None

            drifted = [d for d in [await distance(x) for x in differ["text"]] if d is not None]
            same = [d for d in [await distance(x) for x in control] if d is not None]

    def summary(xs):
        return ({"n": len(xs), "median": statistics.median(xs), "max": max(xs)} if xs
                else {"n": 0})
    return {"prompts": len(PROMPTS), "tokens": TOKENS, "steps": steps,
            "drift": {k: {"steps": len(v), "fraction": len(v) / max(1, steps)}
                      for k, v in differ.items()},
            "chat_drift_is_text_drift": [x[:2] for x in differ["chat"]]
            == [x[:2] for x in differ["text"]],
            "text_drift_steps": [list(x[:2]) for x in differ["text"]],
            "next_position_tv_where_text_drifted": summary(drifted),
            "next_position_tv_each": [round(x, 4) for x in drifted],
            "next_position_tv_control": summary(same)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/bench/drift_steps.json")
    a = ap.parse_args()
    result = asyncio.run(run())
    print(json.dumps(result, indent=2))
    Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
