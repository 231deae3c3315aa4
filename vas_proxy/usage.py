"""What a request cost: the OpenAI `usage` counts, `usage.vas`, and timings for benchmarks.

One place counts a billed call against a cache hit (`count`), and one place turns the counts
into each wire shape, so the engine, Best-of-N, the service and the eval cannot disagree.

Each billed call is also kept as a `Call` (prompt tokens, completion tokens, the cached prompt
tokens the upstream reported or None, the shared-prefix tokens), so price models
(`vas_proxy.prices`) can price output and a cached prefix apart after the fact.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .protocol import UpstreamResult

# One billed call: (prompt_tokens, completion_tokens, cached tokens the upstream reported or
# None, prompt tokens an earlier call of the same Usage already sent as a prefix)
Call = tuple[int, int, int | None, int]


@dataclass
class Usage:
    """Counts for `usage` and `usage.vas` (docs/design.md §5), plus timings for benchmarks."""

    prompt_tokens: int = 0  # the prompt as the upstream counted it (first call)
    completion_tokens: int = 0
    upstream_calls: int = 0
    upstream_prompt_tokens: int = 0
    upstream_completion_tokens: int = 0
    cache_hits: int = 0
    rejected_draft_tokens: int = 0
    draft_trials: int = 0  # drafts put to the acceptance test
    drafts_accepted: int = 0
    upstream_seconds: float = 0.0
    scoring_seconds: float = 0.0
    # Prompt tokens of streamed calls whose stream reported no usage (the engine's estimate)
    estimated_prompt_tokens: int = 0
    # Chosen legacy "" (llama-cpp-python: the end token and partial-UTF-8 tokens collide) told
    # apart by asking the upstream (`ChunkSource._resolve_empty`); answers ended on one that
    # could not be; and the target mass of candidates a text prompt cannot carry (pieces of a
    # character), summed over steps: all 0 on upstreams that report bytes.
    ambiguous_resolved: int = 0
    ambiguous_ends: int = 0
    unreachable_mass: float = 0.0
    calls: list[Call] = field(default_factory=list)  # one per billed call, in order
    # The prompt text of each of `calls` (same order): kept only to find shared prefixes.
    _prompts: list[str] = field(default_factory=list, repr=False, compare=False)

    def count(self, res: UpstreamResult) -> None:
        """Account one upstream answer: billed when it came from the upstream, a cache hit
        (nothing billed) when it came from the response cache."""
        if res.cached:
            self.cache_hits += 1
        else:
            self.upstream_calls += 1
            self.upstream_prompt_tokens += res.prompt_tokens
            self.upstream_completion_tokens += res.completion_tokens
            shared = _shared_prefix(self.calls, self._prompts, res.prompt, res.prompt_tokens)
            self.calls.append((res.prompt_tokens, res.completion_tokens, res.cached_tokens,
                               shared))
            self._prompts.append(res.prompt)

    @property
    def billed_tokens(self) -> int:
        return self.upstream_prompt_tokens + self.upstream_completion_tokens

    @property
    def upstream_cached_tokens(self) -> int | None:
        """Cached prompt tokens the upstream reported, summed; None when no call reported."""
        reported = [c[2] for c in self.calls if c[2] is not None]
        return sum(reported) if reported else None

    def add(self, other: "Usage") -> None:
        """Add `other`'s counts; its calls follow ours, as if this Usage had counted them, so
        a prompt one of ours already sent counts as their shared prefix."""
        for f in fields(self):
            if f.name not in ("calls", "_prompts"):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        theirs = list(other.calls)
        prompts = other._prompts + [""] * (len(theirs) - len(other._prompts))
        mine, my_prompts = list(self.calls), list(self._prompts)
        for (p, c, cached, shared), text in zip(theirs, prompts):
            shared = max(shared, _shared_prefix(mine, my_prompts, text, p))
            self.calls.append((p, c, cached, shared))
            self._prompts.append(text)

    @classmethod
    def total(cls, usages: list["Usage"]) -> "Usage":
        """The usage of a request with several choices: counts summed, but the prompt is the
        same for every choice, so it is counted once (as OpenAI does)."""
        out = cls()
        for u in usages:
            out.add(u)
        out.prompt_tokens = usages[0].prompt_tokens if usages else 0
        return out

    def vas_dict(self) -> dict:
        """`usage.vas` on the wire."""
        return {"upstream_calls": self.upstream_calls,
                "upstream_prompt_tokens": self.upstream_prompt_tokens,
                "upstream_completion_tokens": self.upstream_completion_tokens,
                "cache_hits": self.cache_hits,
                "rejected_draft_tokens": self.rejected_draft_tokens,
                "upstream_cached_tokens": self.upstream_cached_tokens,
                "ambiguous_resolved": self.ambiguous_resolved,
                "ambiguous_ends": self.ambiguous_ends,
                "unreachable_mass": round(self.unreachable_mass, 6)}

    def openai_dict(self) -> dict:
        """The response's `usage` object: OpenAI's three counts plus `vas`."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "vas": self.vas_dict()}

    def record_dict(self) -> dict:
        """The flat columns of an eval record (results.jsonl)."""
        return {"tokens": self.completion_tokens, "upstream_calls": self.upstream_calls,
                "upstream_prompt_tokens": self.upstream_prompt_tokens,
                "upstream_completion_tokens": self.upstream_completion_tokens,
                "billed_tokens": self.billed_tokens, "cache_hits": self.cache_hits,
                "rejected_draft_tokens": self.rejected_draft_tokens,
                "upstream_cached_tokens": self.upstream_cached_tokens,
                "calls": [list(c) for c in self.calls],
                "estimated_prompt_tokens": self.estimated_prompt_tokens,
                "ambiguous_resolved": self.ambiguous_resolved,
                "ambiguous_ends": self.ambiguous_ends,
                "unreachable_mass": self.unreachable_mass,
                "upstream_seconds": self.upstream_seconds,
                "scoring_seconds": self.scoring_seconds}


def _shared_prefix(calls: list[Call], prompts: list[str], prompt: str, prompt_tokens: int) -> int:
    """The most prompt tokens of an earlier call whose prompt text starts `prompt`: what a
    prefix cache could serve (the guided loop re-sends prompt + response so far, Best-of-N
    samples one prompt), at most `prompt_tokens` (re-tokenisation may split text differently)."""
    best = 0
    if not prompt:  # no text (token-id prompts): nothing to compare
        return best
    for (tokens, *_), earlier in zip(reversed(calls), reversed(prompts)):
        # newest first: in the guided loop the newest is the longest prefix, and every older
        # call is then skipped without comparing text
        if best < tokens and earlier and prompt.startswith(earlier):
            best = tokens
    return min(best, prompt_tokens)
