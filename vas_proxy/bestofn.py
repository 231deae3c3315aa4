"""Best-of-N, the baseline VAS is measured against (docs/design.md §1): N full responses sampled
plainly from the upstream, the one the reward scores highest returned.

One function serves the service (`vas: {"best_of": N, "reward": NAME}`) and the eval, so the
baseline they report is the same code. Each sample is one ordinary completion call (the
provider profile's neutral sampler, so the samples follow the upstream's own distribution),
with the request's stop strings. There is no guided loop here: the engine is not involved.
The KL of the winner's distribution to the base is at most log N − (N−1)/N (`kl_bound`).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

import numpy as np

from .defaults import MAX_BEST_OF
from .errors import ConfigError, UpstreamError
from .upstream.client import UpstreamClient
from .upstream.continuation import ChatPrompt, TokenPrompt, continued
from .usage import Usage



@dataclass
class BestOfN:
    """The winner (`text`, `finish_reason`), every sample and its score, and the summed usage
    (all N calls are billed; `completion_tokens` counts the winner only, as the answer)."""

    text: str
    finish_reason: str
    index: int
    texts: list[str]
    scores: list[float | None]  # None: a pruned sample the reward never saw
    usage: Usage = field(default_factory=Usage)
    # Mode-specific facts for `vas_best_of` and the eval (e.g. where each pruned sample stopped)
    details: dict = field(default_factory=dict)
    # The upstream answers (one per sample, or one for all when the upstream took `n`) and each
    # call's seconds: the eval derives Best-of-m for m < n from the first m samples.
    results: list = field(default_factory=list, repr=False)
    seconds: list[float] = field(default_factory=list, repr=False)
    # The KL to the base the winner's law pays and its kind, as the eval records it: "bound"
    # (plain: `kl_bound`; guided: `bestof_modes.hybrid_kl`), or None, "none" (pruned)
    kl: float | None = None
    kl_kind: str = "none"

    @property
    def score(self) -> float:
        return self.scores[self.index]


def kl_bound(n: int) -> float:
    """Upper bound on KL(best-of-n ‖ base): log n − (n−1)/n (Beirami et al. 2024)."""
    return math.log(n) - (n - 1) / n


def check_best_of(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_BEST_OF:
        raise ConfigError(f"vas.best_of must be an integer from 1 to {MAX_BEST_OF}",
                          param="vas.best_of")
    return n


def base_top_k(upstream: UpstreamClient, k: int) -> int:
    """The `top_k` that makes Best-of-N sample the base the guided sampler tilts (the
    upstream's top-k distribution, beta 0) where the upstream can sample top-k itself
    (llama.cpp, vLLM: their samples follow their logprobs); elsewhere 0, its full distribution."""
    return k if upstream.profile.samples_follow_logprobs else 0


def sample_prompt(text: str, upstream_prompt: TokenPrompt | ChatPrompt | None
                  ) -> str | list[int] | ChatPrompt:
    """What a Best-of-N sample sends for a prompt the engine would continue as
    `upstream_prompt` (None: `text`): the same token ids, chat or text, so its samples come
    from the very prompt the guided loop continues."""
    return continued(text if upstream_prompt is None else upstream_prompt, "", ())


def pruning_prompt(text: str, upstream_prompt: TokenPrompt | ChatPrompt | None
                   ) -> str | ChatPrompt:
    """What value-pruned Best-of-N continues its text samples from: a chat, or text (its
    samples have no token ids, so a token-id prompt goes as the text it was made from)."""
    if isinstance(upstream_prompt, ChatPrompt):
        return upstream_prompt
    return upstream_prompt.text if isinstance(upstream_prompt, TokenPrompt) else text


def sample_seeds(seed: int | None, n: int) -> list[int]:
    """Upstream seeds of the n samples: derived from the request seed, random when unseeded
    (a server's default seed may be fixed, which would make the n samples identical)."""
    rng = np.random.default_rng(None if seed is None else [seed, 2])
    return [int(s) for s in rng.integers(2**31, size=n)]


async def best_of_n(upstream: UpstreamClient, prompt: str | list[int] | ChatPrompt, *, n: int,
                    reward, reward_prompt: str, max_tokens: int, stop: list[str] | None = None,
                    temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                    seed: int | None = None, model: str | None = None,
                    concurrency: int = 4) -> BestOfN:
    """Sample n responses to `prompt` (the exact upstream text, its token ids or a chat:
    `sample_prompt`) and return the best one.

    `reward(prompts, responses) -> list[float]` scores each response against `reward_prompt`
    (what the user asked: the raw prompt, or the last user message of a chat). Ties go to the
    first sample. `top_k` > 0 restricts sampling to the top-k tokens (the base distribution
    the guided sampler tilts, so best-of-1 and beta 0 sample alike; llama.cpp and vLLM only).
    Seeded requests are reproducible (and cacheable); unseeded ones are not cached.

    Where the profile says the upstream takes `n` (vLLM, SGLang, OpenAI), the n samples come
    from ONE call, its prompt billed once, seeded by one seed derived from `seed`. Elsewhere
    they are n calls, at most `concurrency` in flight (a one-slot server such as llama.cpp
    queues the rest, and a queued request's timeout runs while it waits), sample i seeded by
    `sample_seeds(seed, n)[i]`, so the first m samples of a Best-of-n are a Best-of-m's.
    """
    check_best_of(n)
    usage = Usage()
    gate = asyncio.Semaphore(max(1, concurrency))
    extra = {"top_p": top_p} if top_p < 1.0 else {}
    if top_k:
        extra["top_k"] = top_k
    seconds: dict[int, float] = {}

    async def call(i: int, s: int, k: int):
        async with gate:
            t0 = time.perf_counter()
            # No logprobs (top_k=0 below): only the text is scored, and they cost ~3x.
            res = await upstream.complete(prompt, max_tokens=max_tokens, top_k=0,
                                          temperature=temperature, seed=s, stop=stop or None,
                                          model=model, cache=seed is not None,
                                          extra=extra or None, n=k)
            seconds[i] = time.perf_counter() - t0
            usage.upstream_seconds += seconds[i]
            return res

    one_call = n > 1 and upstream.profile.accepts_n
    if one_call:
        res = await call(0, sample_seeds(seed, 1)[0], n)
        results = [res]
        outs = list(res.choices)
        if len(outs) != n:
            raise UpstreamError(f"the upstream answered {len(outs)} choices where n={n} was "
                                f"asked; use a provider profile without `n` support")
    else:
        results = list(await asyncio.gather(*(call(i, s, 1)
                                              for i, s in enumerate(sample_seeds(seed, n)))))
        outs = [(r.text, r.finish_reason) for r in results]
    texts = [cut_at_stop(t, stop) for t, _ in outs]
    t0 = time.perf_counter()
    scores = await asyncio.to_thread(reward, [reward_prompt] * n, texts)
    usage.scoring_seconds = time.perf_counter() - t0
    best = int(np.argmax(scores))
    for r in results:
        usage.count(r)
    usage.prompt_tokens = results[0].prompt_tokens
    # One call bills all choices together: the winner's own count is their mean.
    usage.completion_tokens = (round(results[0].completion_tokens / n) if one_call
                               else results[best].completion_tokens)
    finish = "stop" if outs[best][1] == "stop" else "length"
    return BestOfN(texts[best], finish, best, texts, [float(s) for s in scores], usage,
                   details={"mode": "plain", "calls": len(results)}, results=results,
                   seconds=[seconds[i] for i in range(len(results))],
                   # the bound holds against the law sampled: the base only when untempered
                   **({"kl": kl_bound(n), "kl_kind": "bound"}
                      if temperature == 1.0 and top_p == 1.0 else {}))


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """The text before the first stop string (servers normally cut it already)."""
    for s in stop or []:
        if s and s in text:
            text = text[:text.index(s)]
    return text
