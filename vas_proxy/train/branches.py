"""Branch rollouts (`--branches N`): responses that share a prefix and part at one token.

TD(λ) on independent rollouts sees two responses of a prompt part at their first token and
differ everywhere after, so what one token is worth is never isolated; yet that is all guidance
asks of the values (the ranking of a state's top-k candidates, docs/design.md §1.10). At N
seeded states per training prompt (a cut in one of its rollouts, as `--consistency` picks
them), every one of the state's top `--branch-k` candidates is completed once by the upstream
to the response horizon, seeded, and each branch is trained on as a rollout of its own. Stored
in branches.jsonl (one `Rollout` each; resumable like the rollouts).
"""

from __future__ import annotations

import numpy as np

from .rollouts import Completer, JsonlStore, Rollout, derive_seed, run_jobs

_BRANCH_STREAM = 4_000_037  # seeds apart from rollouts', validation's and the candidate check's
_SAMPLE_BASE = 1_000_000  # a branch's `sample`: base + 1000 * branch point + candidate


def branch_points(rollouts: list[Rollout], per_prompt: int, k: int,
                  seed: int) -> list[tuple[Rollout, int, str]]:
    """Up to `per_prompt` (rollout, t, prefix) per prompt: seeded, distinct cuts over the
    prompt's rollouts that stored their top-k (none for a prompt without)."""
    by_prompt: dict[int, list[Rollout]] = {}
    for r in rollouts:
        by_prompt.setdefault(r.prompt_index, []).append(r)
    out = []
    for index, group in sorted(by_prompt.items()):
        cuts = [(r, t, prefix) for r in sorted(group, key=lambda r: r.sample)
                for t, prefix in r.cut_points(k)]
        if not cuts:
            continue
        rng = np.random.default_rng([seed, index, _BRANCH_STREAM])
        picked = rng.choice(len(cuts), size=min(per_prompt, len(cuts)), replace=False)
        out += [cuts[i] for i in sorted(picked)]
    return out


async def sample_branches(client: Completer, rollouts: list[Rollout], *, per_prompt: int, k: int,
                          max_tokens: int, seed: int, stop: list[str], store: JsonlStore,
                          concurrency: int = 2, progress: bool = True) -> list[Rollout]:
    """Every branch of every branch point, reusing the stored ones made with the same
    settings; a branch is the prefix, its candidate and one completion of the tokens left."""
    stored = store.load()
    wanted: dict[tuple[int, int], Rollout] = {}
    todo = []
    counts: dict[int, int] = {}
    for r, t, prefix in branch_points(rollouts, per_prompt, k, seed):
        j = counts.get(r.prompt_index, 0)
        counts[r.prompt_index] = j + 1
        for a, (cand, _) in enumerate(r.top[t][:k]):
            sample = _SAMPLE_BASE + 1000 * j + a
            s = derive_seed(seed, r.prompt_index, r.sample, t, a, _BRANCH_STREAM)
            head = prefix + cand
            old = stored.get((r.prompt_index, sample))
            if old is not None and (old.seed, old.model, old.max_tokens, old.upstream_prompt) \
                    == (s, client.model, max_tokens, r.upstream_prompt) \
                    and old.response.startswith(head):
                wanted[old.key] = old
            else:
                todo.append((r, sample, s, head, max_tokens - t - 1))
    if len(wanted) != len(stored):
        store.rewrite(wanted.values())

    async def work(job):
        r, sample, s, head, left = job
        text, finish = "", "length"
        if left > 0:
            res = await client.complete(r.upstream_prompt + head, max_tokens=left, top_k=0,
                                        temperature=1.0, seed=s, stop=stop or None)
            text, finish = res.text, res.finish_reason
        b = Rollout(r.prompt_index, sample, s, client.model, max_tokens, r.prompt,
                    r.upstream_prompt, head + text, finish_reason=finish)
        store.append(b)
        wanted[b.key] = b

    await run_jobs(todo, work, concurrency, "branches", progress)
    return [wanted[key] for key in sorted(wanted)]
