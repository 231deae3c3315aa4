"""Best-of-N beyond the plain baseline (`bestofn`), and the one dispatcher that the service and
`vas-proxy generate` share (docs/design.md §1.7); the eval calls the two functions directly.

- **pruned** (`pruned_best_of_n`): Speculative Rejection (Sun et al. 2024) for a black box. n
  plain samples grow `block` tokens per call. At each block boundary the value models rank the
  unfinished partial responses, and only the top `keep` fraction goes on. Upstream tokens go to
  the promising samples. The value model judges partial responses, which is what TD(λ) trained
  it to predict.
- **guided** (`guided_best_of_n`): n VAS generations through the engine; the reward picks.
  Its KL to the base is at most Best-of-n's bound plus the winner's own log q/p (`hybrid_kl`).

The field rules (`BEST_OF_RULES`, `check_best_of_fields`) are shared by the wire's `vas` schema
and `generate`'s flags, so they cannot disagree.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from . import sampling
# cut_at_stop: the stop rule plain Best-of-N cuts its texts by, so one-block pruned runs equal it
from .bestofn import (BestOfN, best_of_n, check_best_of, cut_at_stop, kl_bound,
                      pruning_prompt, sample_prompt, sample_seeds)
from .defaults import BEST_OF_MODES, PRUNE_BLOCK, PRUNE_KEEP
from .engine import Engine, GenerationRequest
from .errors import ConfigError
from .upstream.client import UpstreamClient
from .upstream.continuation import ChatPrompt, continued
from .usage import Usage
from .values import ValueFunction

# The `vas` fields of Best-of-N (the guidance fields are guidance.GUIDANCE_RULES').
BEST_OF_FIELDS = ("best_of", "reward", "best_of_mode", "prune_block", "prune_keep")


def check_best_of_mode(mode) -> str:
    if not isinstance(mode, str) or mode not in BEST_OF_MODES:
        raise ConfigError(f"vas.best_of_mode must be one of {', '.join(BEST_OF_MODES)}",
                          param="vas.best_of_mode")
    return mode


def check_prune_block(block) -> int:
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ConfigError("vas.prune_block must be an integer >= 1 (tokens per block)",
                          param="vas.prune_block")
    return block


def check_prune_keep(keep) -> float:
    ok = (not isinstance(keep, bool) and isinstance(keep, (int, float))
          and math.isfinite(keep) and 0 < keep <= 1)
    if not ok:
        raise ConfigError("vas.prune_keep must be a number in (0, 1] (the fraction of partial "
                          "responses kept at each block boundary)", param="vas.prune_keep")
    return float(keep)


# Each field's own rule. `reward` has none here: only the serving knows the loaded names.
BEST_OF_RULES: dict[str, Callable] = {"best_of": check_best_of,
                                      "best_of_mode": check_best_of_mode,
                                      "prune_block": check_prune_block,
                                      "prune_keep": check_prune_keep}


def check_together(given: Mapping[str, object]) -> None:
    """How the given Best-of-N fields combine ({field: value} of those set): `reward` and
    `best_of_mode` only with `best_of`, `prune_*` only with mode "pruned"."""
    for name in ("reward", "best_of_mode"):
        if name in given and "best_of" not in given:
            raise ConfigError(f"vas.{name} is only used with vas.best_of", param=f"vas.{name}")
    for name in ("prune_block", "prune_keep"):
        if name in given and given.get("best_of_mode") != "pruned":
            raise ConfigError(f'vas.{name} is only used with vas.best_of_mode "pruned"',
                              param=f"vas.{name}")


def check_best_of_fields(given: Mapping[str, object]) -> None:
    """Every rule, in the wire's order: each field's own, then how they combine."""
    for name, rule in BEST_OF_RULES.items():
        if name in given:
            rule(given[name])
    check_together(given)


def prune_weights(values: Mapping[str, ValueFunction],
                  weights: Mapping[str, float] | None) -> dict[str, float]:
    """The weights that rank partial responses (None: every loaded model at 1). Unknown names
    and an all-zero mix are errors: a ranking of equal values would prune at random."""
    if weights is None:
        w = {name: 1.0 for name in values}
    else:
        unknown = set(weights) - set(values)
        if unknown:
            raise ConfigError(
                f"unknown value model(s) in vas.weights: {', '.join(sorted(unknown))}; "
                f"loaded: {', '.join(sorted(values)) or 'none'}", param="vas.weights")
        w = {name: float(v) for name, v in weights.items()}
    if not any(v != 0.0 for v in w.values()):
        raise ConfigError('vas.best_of_mode "pruned" ranks partial responses by the value '
                          "models: it needs one with a nonzero weight; loaded: "
                          f"{', '.join(sorted(values)) or 'none'}", param="vas.weights")
    return w


def block_seeds(seed: int | None, n: int, blocks: int) -> list[list[int]]:
    """Upstream seeds, [sample][block]. Block 0 is plain Best-of-N's (`sample_seeds`), so a
    pruned run whose first block is the whole answer samples what plain Best-of-N does; later
    blocks come from a stream per sample ([seed, 3, i]). Random when unseeded."""
    first = sample_seeds(seed, n)
    out = []
    for i in range(n):
        rng = np.random.default_rng(None if seed is None else [seed, 3, i])
        out.append([first[i], *(int(s) for s in rng.integers(2**31, size=blocks - 1))])
    return out


def kept_count(keep: float, alive: int) -> int:
    """ceil(keep × alive), at least 1; the product is rounded first (0.3 × 10 is 3, not 4)."""
    return max(1, math.ceil(round(keep * alive, 9)))


@dataclass
class _Sample:
    text: str = ""
    tokens: int = 0
    prompt_tokens: int = 0
    finish: str = "length"
    done: bool = False
    pruned: bool = False


async def pruned_best_of_n(upstream: UpstreamClient, prompt: str | ChatPrompt, *, n: int,
                           reward, reward_prompt: str, values: Mapping[str, ValueFunction],
                           weights: Mapping[str, float] | None, max_tokens: int,
                           block: int = PRUNE_BLOCK, keep: float = PRUNE_KEEP,
                           stop: list[str] | None = None, temperature: float = 1.0,
                           top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
                           model: str | None = None, concurrency: int = 4,
                           value_prompt: str | None = None) -> BestOfN:
    """Value-pruned Best-of-N of `prompt` (the exact upstream text, or a chat to continue;
    `value_prompt`: its text for the value models, default `prompt`).

    Each call grows one sample by up to `block` tokens: a plain completion of prompt + its text
    so far, with no logprobs. At each boundary, `values[name].score(prompt, "", partials)` gives
    every unfinished sample's value, combined by `weights` (`sampling.combine_values`). The top
    `kept_count(keep, alive)` go on, ties to the first. The rest stop where they are and cost
    nothing more. Samples that ended (a stop string, end of turn, `max_tokens`) stay complete.
    The reward then picks among every sample that was not pruned, ties to the first.
    `scores[i]` is None for a pruned sample, which the reward never sees. Every call is billed
    in `usage`; `completion_tokens` is the winner's. `details` records, per sample, the tokens
    it reached and whether it was pruned, and, per boundary, who was alive, their combined
    values and who was kept. Seeded runs are reproducible and cached (`block_seeds`).
    """
    check_best_of(n)
    view = value_prompt if value_prompt is not None else prompt  # what the values read
    check_prune_block(block)
    keep = check_prune_keep(keep)
    w = prune_weights(values, weights)
    usage = Usage()
    gate = asyncio.Semaphore(max(1, concurrency))
    extra = {"top_p": top_p} if top_p < 1.0 else {}
    if top_k:
        extra["top_k"] = top_k
    blocks = math.ceil(max_tokens / block)
    seeds = block_seeds(seed, n, blocks)
    samples = [_Sample() for _ in range(n)]

    async def grow(i: int, j: int) -> None:
        s = samples[i]
        async with gate:
            t0 = time.perf_counter()
            res = await upstream.complete(continued(prompt, s.text, ()),
                                          max_tokens=min(block, max_tokens
                                                                          - s.tokens),
                                          top_k=0, temperature=temperature, seed=seeds[i][j],
                                          stop=stop or None, model=model,
                                          cache=seed is not None, extra=extra or None)
            usage.upstream_seconds += time.perf_counter() - t0
        usage.count(res)
        if j == 0:
            s.prompt_tokens = res.prompt_tokens
        grown = s.text + res.text
        s.text = cut_at_stop(grown, stop)  # also a stop string that straddles two blocks
        s.tokens += res.completion_tokens
        if res.finish_reason == "stop" or len(s.text) < len(grown):
            s.finish, s.done = "stop", True
        elif s.tokens >= max_tokens or res.completion_tokens == 0:
            s.done = True

    def rank(alive: list[int]) -> np.ndarray:
        partials = [samples[i].text for i in alive]
        scores = {name: values[name].score(view, "", partials)
                  for name, wt in w.items() if wt != 0.0}
        return sampling.combine_values(scores, w, len(partials))

    rounds: list[dict] = []
    alive = list(range(n))
    for j in range(blocks):  # every live sample is at block j: survivors all go on together
        await asyncio.gather(*(grow(i, j) for i in alive))
        alive = [i for i in alive if not samples[i].done]
        if not alive or j == blocks - 1:
            break
        t0 = time.perf_counter()
        v = await asyncio.to_thread(rank, alive)
        usage.scoring_seconds += time.perf_counter() - t0
        order = np.argsort(-v, kind="stable")[:kept_count(keep, len(alive))]
        kept = sorted(alive[k] for k in order)
        for i in set(alive) - set(kept):
            samples[i].pruned = True
        rounds.append({"alive": alive, "values": [float(x) for x in v], "kept": kept})
        alive = kept

    complete = [i for i in range(n) if not samples[i].pruned]
    t0 = time.perf_counter()
    got = await asyncio.to_thread(reward, [reward_prompt] * len(complete),
                                  [samples[i].text for i in complete])
    usage.scoring_seconds += time.perf_counter() - t0
    scores: list = [None] * n
    for i, sc in zip(complete, got):
        scores[i] = float(sc)
    best = complete[int(np.argmax([scores[i] for i in complete]))]
    usage.prompt_tokens = samples[best].prompt_tokens
    usage.completion_tokens = samples[best].tokens
    details = {"mode": "pruned", "block": block, "keep": keep,
               "tokens": [s.tokens for s in samples], "pruned": [s.pruned for s in samples],
               "rounds": rounds}
    return BestOfN(samples[best].text, samples[best].finish, best, [s.text for s in samples],
                   scores, usage, details=details)


def guided_seeds(seed: int | None, n: int) -> list[int | None]:
    """The request seeds of guided Best-of-N's n generations: their own stream ([seed, 4]),
    apart from a request's choices (seed + i); None (random) when unseeded."""
    if seed is None:
        return [None] * n
    return [int(s) for s in np.random.default_rng([seed, 4]).integers(2**31, size=n)]


def hybrid_kl(n: int, winner_kl: float) -> float:
    """An upper bound on the KL to the base of Best-of-n over VAS samples, estimated from one
    response: KL(A‖p) = KL(A‖q) + E_A[log q/p] exactly (A the winner's law, q the guided one),
    the first term is at most Best-of-n's log n − (n−1)/n, and the winner's Σ log q − log p
    (`Generation.kl`) is an unbiased one-sample estimate of the second (docs/design.md §1.7)."""
    return kl_bound(n) + float(winner_kl)


async def guided_best_of_n(engine: Engine, req: GenerationRequest, *, n: int, reward,
                           reward_prompt: str, concurrency: int = 2) -> BestOfN:
    """Best-of-N over VAS samples: n guided generations of `req` (`engine.generate`, sample i
    seeded `guided_seeds(req.seed, n)[i]`), the one `reward` scores highest, ties to the first.
    Usage is summed; `completion_tokens` is the winner's. `details` has each sample's tokens
    and KL to the base (§1.4), and `kl_bound`, the winner's `hybrid_kl`."""
    check_best_of(n)
    gate = asyncio.Semaphore(max(1, concurrency))
    seeds = guided_seeds(req.seed, n)

    async def one(s: int | None):
        async with gate:
            return await engine.generate(replace(req, seed=s))

    gens = await asyncio.gather(*(one(s) for s in seeds))
    texts = [g.text for g in gens]
    t0 = time.perf_counter()
    scores = [float(x) for x in await asyncio.to_thread(reward, [reward_prompt] * n, texts)]
    usage = Usage()
    for g in gens:
        usage.add(g.usage)
    usage.scoring_seconds += time.perf_counter() - t0
    best = int(np.argmax(scores))
    usage.prompt_tokens = gens[best].usage.prompt_tokens
    usage.completion_tokens = gens[best].usage.completion_tokens
    details = {"mode": "guided", "beta": req.guidance.beta, "seeds": seeds,
               "tokens": [g.usage.completion_tokens for g in gens],
               "kl": [float(g.kl) for g in gens], "kl_bound": hybrid_kl(n, gens[best].kl)}
    return BestOfN(gens[best].text, gens[best].finish_reason, best, texts, scores, usage,
                   details=details, kl=details["kl_bound"], kl_kind="bound")


async def run_best_of(engine: Engine, req: GenerationRequest, *, mode: str, n: int, reward,
                      reward_prompt: str, block: int | None = None,
                      keep: float | None = None) -> BestOfN:
    """Best-of-N of one engine request in `mode`: the service's and `generate`'s one path.
    "pruned" ranks with the engine's value models and `req.guidance.weights`; "guided" samples
    with `req.guidance`. The model's end-of-turn texts stop plain and pruned samples too."""
    check_best_of_mode(mode)
    if mode == "guided":
        return await guided_best_of_n(engine, req, n=n, reward=reward,
                                      reward_prompt=reward_prompt)
    stop = list(dict.fromkeys([*(req.stop or []), *sorted(engine.eos_texts)]))
    common = dict(n=n, reward=reward, reward_prompt=reward_prompt, max_tokens=req.max_tokens,
                  stop=stop, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                  model=req.model)
    if mode == "pruned":
        return await pruned_best_of_n(
            engine.upstream, pruning_prompt(req.prompt, req.upstream_prompt),
            values=engine.values, weights=req.guidance.weights, value_prompt=req.prompt,
            block=PRUNE_BLOCK if block is None else block,
            keep=PRUNE_KEEP if keep is None else keep, **common)
    return await best_of_n(engine.upstream, sample_prompt(req.prompt, req.upstream_prompt),
                           **common)
