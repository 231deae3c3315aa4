"""States with their top-k candidates and Monte-Carlo completions: what a one-step check of a
value model needs (the math is in `onestep`; docs/design.md §1.9).

Guidance uses a value model for one thing: to rank the top-k candidates of one state against
each other. This samples exactly that situation from the base model, once, for any number of
value models and rewards: a base response per (prompt, draw) with its top-k logprobs, a seeded
cut t in it (the state: prompt + its first t tokens), the top-k candidates there, and m fresh
completions of each of the first `complete` candidates up to the response horizon. The mean
reward of a candidate's completions estimates Q_p(s, a) without bias, and no value model
touched it, so one sample judges them all. Stored as JSONL, seeded, resumable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..protocol import Candidate
from ..rewards import Reward
from .prompts import PromptItem
from .rollouts import Completer, JsonlStore, derive_seed, printable, run_jobs

STATES_FILE = "states.jsonl"
_STATE_STREAM = 2_000_003  # seed streams apart from rollouts' and validation's
_COMPLETION_STREAM = 3_000_017


@dataclass
class CandidateState:
    """One base state, its top-k candidates, and completions of the first few of them.

    `n_tokens` is the whole base response's length (a state drawn uniformly from it stands for
    its n positions: the response's sum over states is about n × this state's term).
    `completions[a]` are the continuations after candidate a; `terminal[a]` marks a candidate
    that ends the turn (no continuation: the response is the prefix alone).
    """

    prompt_index: int
    draw: int
    seed: int
    max_tokens: int
    prompt: str  # the text rewards see
    upstream_prompt: str
    n_tokens: int
    t: int
    prefix: str
    texts: list[str]  # top-k candidates, best first
    logprobs: list[float]
    terminal: list[bool]
    completions: list[list[str]] = field(default_factory=list)  # for texts[:len(completions)]
    rewards: dict[str, list[list[float]]] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int]:
        return (self.prompt_index, self.draw)

    def responses(self) -> list[list[str]]:
        """The full response text of every completion, per completed candidate."""
        return [[self.prefix + ("" if self.terminal[a] else self.texts[a] + c) for c in comps]
                for a, comps in enumerate(self.completions)]


def pick_state(sampled: list[Candidate], rng: np.random.Generator) -> tuple[int, str] | None:
    """A uniform cut t in [0, n − 2] and the prefix text of the first t tokens; t moves forward
    past a cut that would split a character. None when the response is too short."""
    n = len(sampled)
    if n < 2:
        return None
    t = int(rng.integers(0, n - 1))
    data = b"".join(c.bytes for c in sampled)
    ends = np.cumsum([0] + [len(c.bytes) for c in sampled])
    for cut in range(t, n - 1):
        try:
            return cut, data[:ends[cut]].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def _same(old: CandidateState, seed: int, max_tokens: int, upstream: str, k: int,
          complete: int, m: int) -> bool:
    """Was `old` made with these settings? (A response can list fewer than k candidates.)"""
    return ((old.seed, old.max_tokens, old.upstream_prompt) == (seed, max_tokens, upstream)
            and len(old.texts) <= k and len(old.completions) == min(complete, len(old.texts))
            and all(len(c) == m for c in old.completions))


async def sample_states(client: Completer, prompts: list[PromptItem], *, draws: int, k: int,
                        complete: int, m: int, max_tokens: int, seed: int, stop: list[str],
                        store: JsonlStore, concurrency: int = 2,
                        progress: bool = True) -> list[CandidateState]:
    """One state per (prompt, draw) with up to `k` candidates (pieces of a character dropped),
    the first `complete` completed `m` times; stored states made with the same settings are
    reused. A response too short to cut, or a state with fewer than 2 candidates, gives no
    state."""
    stored = store.load()
    out: dict[tuple[int, int], CandidateState] = {}
    todo = []
    for item in prompts:
        for d in range(draws):
            s = derive_seed(seed, item.index, d, _STATE_STREAM)
            old = stored.get((item.index, d))
            if old is not None and _same(old, s, max_tokens, item.upstream, k, complete, m):
                out[old.key] = old
            else:
                todo.append((item, d, s))
    if len(out) != len(stored):
        store.rewrite(out.values())

    async def work(job):
        item, d, s = job
        res = await client.complete(item.upstream, max_tokens=max_tokens, top_k=k,
                                    temperature=1.0, seed=s, stop=stop or None)
        positions = [p for p in res.positions if p.sampled is not None]
        sampled = [p.sampled for p in positions]
        cut = pick_state(sampled, np.random.default_rng(s))
        if cut is None:
            return
        t, prefix = cut
        cands = [c for c in positions[t].candidates if printable(c) or c.special][:k]
        if len(cands) < 2:  # nothing to rank: no state (sampled again by a rerun, the same)
            return
        terminal = [c.special or c.text in stop for c in cands]
        state = CandidateState(item.index, d, s, max_tokens, item.text, item.upstream,
                               len(sampled), t, prefix, [c.text for c in cands],
                               [c.logprob for c in cands], terminal)
        left = max(1, max_tokens - t - 1)
        for a in range(min(complete, len(cands))):
            if terminal[a]:
                state.completions.append([""] * m)
                continue
            texts = []
            for j in range(m):
                r = await client.complete(item.upstream + prefix + cands[a].text,
                                          max_tokens=left, top_k=0, temperature=1.0,
                                          seed=derive_seed(s, _COMPLETION_STREAM, a, j),
                                          stop=stop or None)
                texts.append(r.text)
            state.completions.append(texts)
        store.append(state)
        out[state.key] = state

    await run_jobs(todo, work, concurrency, "candidate states", progress)
    return [out[key] for key in sorted(out)]


def score_states(states: list[CandidateState], reward: Reward, spec: str,
                 store: JsonlStore) -> None:
    """Fill each state's completion rewards for `spec` (in place) and persist them."""
    todo = [s for s in states if spec not in s.rewards]
    for s in todo:
        flat = [r for per in s.responses() for r in per]
        scores = reward([s.prompt] * len(flat), flat)
        it = iter(scores)
        s.rewards[spec] = [[float(next(it)) for _ in per] for per in s.completions]
    if todo:
        store.rewrite(states)
