"""Wire-level data shared by every layer: one upstream position's top-k candidates.

Kept free of IO and of any library type so the sampling math and the engine stay testable.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """One next-token candidate as the upstream reported it.

    `text` is what the upstream printed; `raw` the token's bytes when the provider gives them
    (chat shape), else `text` encoded. A token can be a partial UTF-8 sequence (docs/design.md
    §2), so the engine accumulates `raw`, never `text`.
    """

    text: str
    logprob: float
    raw: bytes = b""

    @property
    def bytes(self) -> bytes:
        return self.raw or self.text.encode("utf-8")


@dataclass
class Position:
    """The top-k candidates at one generated position, best first, and the upstream's sample."""

    candidates: list[Candidate]
    sampled: Candidate | None = None


@dataclass
class UpstreamResult:
    """One upstream completion call: positions with logprobs and billed token counts."""

    positions: list[Position]
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
