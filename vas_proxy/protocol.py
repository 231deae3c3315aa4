"""Wire-level data shared by every layer: one upstream position's top-k candidates.

Kept free of IO and of any library type so the sampling math and the engine stay testable.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    """One next-token candidate as the upstream reported it.

    `text` is what the upstream printed; `raw` the token's bytes when the provider gives them
    (chat shape; None: not reported), else `text` encoded. A token can be a partial UTF-8
    sequence (docs/design.md §2), so the engine accumulates `bytes`, never `text`. `id` is the
    token id where the upstream reports it (llama.cpp's server): what a token-id prompt sends.
    """

    text: str
    logprob: float
    raw: bytes | None = None
    id: int | None = None

    @property
    def bytes(self) -> bytes:
        return self.raw if self.raw is not None else self.text.encode("utf-8")

    @property
    def special(self) -> bool:
        """A token the upstream reported as printing no bytes at all: a control token (the end
        of turn), never a piece of text. Only the chat shape can say so; the legacy shape's ""
        is ambiguous (`ambiguous_empty`)."""
        return self.raw == b""

    @property
    def ambiguous_empty(self) -> bool:
        """The legacy shape's "": llama-cpp-python prints every special token and every partial
        UTF-8 token so, and they collide (docs/design.md §2.12). Not a token known by its id
        alone (vLLM's "token_id:N" spelling)."""
        return self.raw is None and not self.text and self.id is None

    @property
    def unnamed(self) -> bool:
        """Known by its id alone (vLLM's "token_id:N"): its bytes were not reported and, for a
        piece of a character, cannot be learnt (upstream/tokenizer.py)."""
        return self.raw is None and not self.text and self.id is not None

    @property
    def partial_utf8(self) -> bool:
        """Bytes that are not whole UTF-8 characters on their own (a piece of one)."""
        try:
            self.bytes.decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False


@dataclass
class Position:
    """The top-k candidates at one generated position, best first, and the upstream's sample."""

    candidates: list[Candidate]
    sampled: Candidate | None = None


@dataclass
class UpstreamResult:
    """One upstream completion call: positions with logprobs and billed token counts.

    `prompt` is the exact prompt text sent, so the usage can tell which calls re-sent an earlier
    prefix (what a prefix cache could serve, `usage.Usage.count`). `cached_tokens` is the part of
    the prompt the upstream *reported* as served from its prompt cache (None: not reported).
    `choices` holds (text, finish_reason) of every choice, in index order (n > 1); `positions`,
    `text` and `finish_reason` are choice 0's. `cached` means our response cache answered.
    """

    positions: list[Position]
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    prompt: str = ""
    cached_tokens: int | None = None
    choices: list[tuple[str, str | None]] = field(default_factory=list)
