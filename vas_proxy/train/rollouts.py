"""Rollouts through the black box: responses sampled from the upstream, stored as JSONL.

Only what any OpenAI-compatible endpoint gives is used: the response text and the sampled
tokens' logprobs, never the base model's weights. Requests run at temperature 1 with the
provider profile's neutral sampler (llama.cpp: top_k=0, top_p=1, min_p=0, repeat_penalty=1), so
the samples follow the model's own distribution (docs/design.md §4), and each carries a seed
derived from (run seed, prompt, sample): a run is reproducible, and a resumed run reuses every stored
rollout whose settings still match instead of sampling it again.

Two files in the run directory: `rollouts.jsonl` (one line per response) and
`validation.jsonl` (held-out responses cut in half, each half completed several times: the
mean reward of those completions is the value the model should predict for the half).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from ..protocol import Candidate, UpstreamResult
from ..rewards import Reward
from .prompts import PromptItem

ROLLOUTS_FILE = "rollouts.jsonl"
VALIDATION_FILE = "validation.jsonl"
EXTRA_FILE = "extra_rollouts.jsonl"
BRANCHES_FILE = "branches.jsonl"


class Completer(Protocol):
    """What sampling needs of an upstream: `UpstreamClient` or anything with its `complete`."""

    model: str

    async def complete(self, prompt: str, *, max_tokens: int, top_k: int,
                       temperature: float = 1.0, seed: int | None = None,
                       stop: list[str] | None = None) -> UpstreamResult:
        ...


def printable(c: Candidate) -> bool:
    """A candidate that is whole text: not a control token, not a piece of a character."""
    return bool(c.bytes) and not c.partial_utf8 and not c.ambiguous_empty


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers: independent streams per (run seed, prompt, sample, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


@dataclass
class Rollout:
    """One sampled response with everything needed to inspect, re-score or reproduce it."""

    prompt_index: int
    sample: int
    seed: int
    model: str
    max_tokens: int
    prompt: str  # the text rewards see (raw prompt, or the chat's last user message)
    upstream_prompt: str  # exactly what was sent upstream (chat template applied)
    response: str
    tokens: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    rewards: dict[str, float] = field(default_factory=dict)
    # per token, the upstream's top-k [text, logprob] at that position (printable ones only;
    # stored for `--consistency` and `--branches`, else empty)
    top: list[list[list]] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, int]:
        return (self.prompt_index, self.sample)

    def cut_points(self, k: int) -> list[tuple[int, str]]:
        """(t, the text of the first t tokens) at each position with >= 2 of its top `k` stored,
        up to the first token that does not join back into the response (a piece of a
        character): the states `--consistency` and `--branches` use."""
        out, prefix = [], ""
        for t, (token, cands) in enumerate(zip(self.tokens, self.top)):
            if not self.response.startswith(prefix):
                break
            if len(cands[:k]) >= 2:
                out.append((t, prefix))
            prefix += token
        return out

    def half(self) -> tuple[str, int]:
        """The first half of the response (by upstream tokens) and its token count."""
        n = len(self.tokens) // 2
        if not self.tokens:  # sampled without logprobs: the token count is not known
            return self.response[:len(self.response) // 2], self.max_tokens // 2
        if "".join(self.tokens) == self.response:
            return "".join(self.tokens[:n]), n
        # Tokens that are partial UTF-8 sequences print as "" and do not join back: cut the
        # text at the same fraction instead.
        return self.response[:len(self.response) // 2], n


@dataclass
class HalfCompletions:
    """A held-out response cut in half and `k` fresh completions of that half."""

    prompt_index: int
    sample: int
    half: str
    half_tokens: int
    seeds: list[int]
    completions: list[str]
    rewards: dict[str, list[float]] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int]:
        return (self.prompt_index, self.sample)


class JsonlStore:
    """Append-only JSONL records (crash-safe: a torn last line is ignored on load)."""

    def __init__(self, path: str | Path, kind: type):
        self.path = Path(path)
        self.kind = kind

    def load(self) -> dict[tuple[int, int], Any]:
        out = {}
        if not self.path.is_file():
            return out
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = self.kind(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue  # a line torn by a crash, or an older layout: sampled again
            out[rec.key] = rec
        return out

    def append(self, rec) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(rec), ensure_ascii=False) + "\n")

    def rewrite(self, recs: Iterable) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for rec in recs:
                f.write(json.dumps(asdict(rec), ensure_ascii=False) + "\n")
        os.replace(tmp, self.path)


async def run_jobs(jobs: list, work: Callable[[Any], Awaitable[None]], concurrency: int,
                    desc: str, progress: bool) -> None:
    """Run `work(job)` for all jobs with at most `concurrency` in flight; the first failure
    cancels the rest and propagates."""
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    bar = tqdm(total=len(jobs), desc=desc, unit="resp", disable=not progress or not jobs,
               dynamic_ncols=True)

    async def worker():
        while not queue.empty():
            job = queue.get_nowait()
            await work(job)
            bar.update()

    tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, concurrency))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        bar.close()


async def sample_rollouts(client: Completer, prompts: list[PromptItem], *, samples: int,
                          max_tokens: int, seed: int, stop: list[str], store: JsonlStore,
                          concurrency: int = 2, progress: bool = True,
                          top_k: int = 1) -> list[Rollout]:
    """`samples` responses per prompt, reusing the stored ones made with the same settings.
    `top_k=0` stores no tokens or logprobs (faster; TD training uses the text only); `top_k >
    1` also stores each position's top-k candidates (`Rollout.top`, for `--consistency` and
    `--branches`)."""
    stored = store.load()
    wanted, todo = {}, []
    for item in prompts:
        for j in range(samples):
            s = derive_seed(seed, item.index, j)
            old = stored.get((item.index, j))
            if old is not None and (old.seed, old.model, old.max_tokens, old.upstream_prompt) \
                    == (s, client.model, max_tokens, item.upstream) \
                    and (top_k <= 1 or len(old.top) == len(old.tokens) > 0):
                wanted[old.key] = old
            else:
                todo.append((item, j, s))
    if len(wanted) != len(stored):  # drop records made with other settings
        store.rewrite(wanted.values())

    async def work(job):
        item, j, s = job
        res = await client.complete(item.upstream, max_tokens=max_tokens, top_k=top_k,
                                    temperature=1.0, seed=s, stop=stop or None)
        positions = [p for p in res.positions if p.sampled is not None]
        sampled = [p.sampled for p in positions]
        top = [[[c.text, c.logprob] for c in p.candidates if printable(c)][:top_k]
               for p in positions] if top_k > 1 else []
        r = Rollout(item.index, j, s, client.model, max_tokens, item.text, item.upstream,
                    res.text, [c.text for c in sampled], [c.logprob for c in sampled],
                    res.finish_reason, top=top)
        store.append(r)
        wanted[r.key] = r

    await run_jobs(todo, work, concurrency, "rollouts", progress)
    return [wanted[(item.index, j)] for item in prompts for j in range(samples)]


async def sample_half_completions(client: Completer, rollouts: list[Rollout], *, k: int,
                                  max_tokens: int, seed: int, stop: list[str],
                                  store: JsonlStore, concurrency: int = 2,
                                  progress: bool = True) -> list[HalfCompletions]:
    """For each held-out rollout, `k` completions of its first half, each allowed the tokens
    the full response had left (max_tokens - half), so the horizon matches training."""
    stored = store.load()
    out: dict[tuple[int, int], HalfCompletions] = {}
    todo = []
    for r in rollouts:
        half, n = r.half()
        seeds = [derive_seed(seed, r.prompt_index, r.sample, 1_000_003, c) for c in range(k)]
        old = stored.get(r.key)
        if old is not None and (old.half, old.seeds) == (half, seeds):
            out[r.key] = old
        else:
            todo.append((r, half, n, seeds))
    if len(out) != len(stored):
        store.rewrite(out.values())

    async def work(job):
        r, half, n, seeds = job
        texts = []
        for s in seeds:
            res = await client.complete(r.upstream_prompt + half, max_tokens=max(1, max_tokens - n),
                                        top_k=0, temperature=1.0, seed=s, stop=stop or None)
            texts.append(res.text)
        h = HalfCompletions(r.prompt_index, r.sample, half, n, seeds, texts)
        store.append(h)
        out[h.key] = h

    await run_jobs(todo, work, concurrency, "validation halves", progress)
    return [out[r.key] for r in rollouts]


def read_eval_responses(path: str | Path, base: list[Rollout]) -> list[Rollout]:
    """Every response of a `vas-proxy eval` results.jsonl as a rollout, for training beside the
    base samples (e.g. guided ones: an on-policy round). The eval must have run on the same
    prompts file: a record's prompt index and text must match a base rollout's, whose exact
    upstream text it takes. Rewards the eval already computed are kept."""
    from ..errors import ConfigError

    upstream = {r.prompt_index: (r.prompt, r.upstream_prompt) for r in base}
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"--extra-rollouts {path}: {exc.strerror or exc}") from None
    out = []
    for i, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            index, prompt, response = rec["prompt_index"], rec["prompt"], rec["response"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError(f"{path}:{i}: not a `vas-proxy eval` result") from None
        if upstream.get(index, (None,))[0] != prompt:
            raise ConfigError(f"{path}:{i}: prompt {index} is not this run's prompt {index}; "
                              "run the eval on the same --prompts file")
        out.append(Rollout(index, i, int(rec.get("seed") or 0), f"eval:{rec.get('setting')}",
                           int(rec.get("tokens") or 0), prompt, upstream[index][1], response,
                           finish_reason=rec.get("finish_reason"),
                           rewards={k: float(v) for k, v in (rec.get("rewards") or {}).items()}))
    return out


def score_rollouts(rollouts: list[Rollout], reward: Reward, spec: str, store: JsonlStore,
                   *, batch_size: int = 64, progress: bool = True) -> None:
    """Fill `rollouts[i].rewards[spec]` where missing (in place) and persist them."""
    todo = [r for r in rollouts if spec not in r.rewards]
    for i in tqdm(range(0, len(todo), batch_size), desc="rewards", unit="batch",
                  disable=not progress or not todo, dynamic_ncols=True):
        chunk = todo[i:i + batch_size]
        for r, v in zip(chunk, reward([r.prompt for r in chunk], [r.response for r in chunk])):
            r.rewards[spec] = v
    if todo:
        store.rewrite(rollouts)


def score_halves(halves: list[HalfCompletions], rollouts: dict, reward: Reward, spec: str,
                 store: JsonlStore) -> None:
    """Fill each half's completion rewards for `spec` (reward of half + completion)."""
    todo = [h for h in halves if spec not in h.rewards]
    for h in todo:
        prompt = rollouts[h.key].prompt
        h.rewards[spec] = reward([prompt] * len(h.completions),
                                 [h.half + c for c in h.completions])
    if todo:
        store.rewrite(halves)
