"""What a request cost: the OpenAI `usage` counts, `usage.vas`, and timings for benchmarks.

One place counts a billed call against a cache hit (`count`), and one place turns the counts
into each wire shape, so the engine, Best-of-N, the service and the eval cannot disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .protocol import UpstreamResult


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

    def count(self, res: UpstreamResult) -> None:
        """Account one upstream answer: billed when it came from the upstream, a cache hit
        (nothing billed) when it came from the response cache."""
        if res.cached:
            self.cache_hits += 1
        else:
            self.upstream_calls += 1
            self.upstream_prompt_tokens += res.prompt_tokens
            self.upstream_completion_tokens += res.completion_tokens

    @property
    def billed_tokens(self) -> int:
        return self.upstream_prompt_tokens + self.upstream_completion_tokens

    def add(self, other: "Usage") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

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
                "rejected_draft_tokens": self.rejected_draft_tokens}

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
                "upstream_seconds": self.upstream_seconds,
                "scoring_seconds": self.scoring_seconds}
