"""The wire shapes of OpenAI-compatible completions (docs/design.md §2): both logprob shapes,
legacy completions (`top_logprobs` is a dict token→logprob per position; two tokens with the
same text collide) and chat (lists of {token, logprob, bytes}); `-9999` marks "outside the
top-k" on some servers and is dropped. Also the prompt-cache counts some upstreams report, and
an error answer as our typed error. Shared by the client's whole answers and its streams.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime

import httpx2 as httpx

from ..errors import (ContextLengthError, MalformedAnswerError, NoLogprobsError,
                      TooFewCandidatesError, UpstreamHTTPError)
from ..protocol import Candidate, Position

_OUTSIDE_TOPK = -9999.0
_CONTEXT_HINTS = ("context window", "context length", "exceed", "too long", "n_ctx",
                  "maximum context")


@contextlib.contextmanager
def answer_shape(what: str = "answer"):
    """A 2xx body of the wrong shape (lists for dicts, strings for numbers, missing keys) as
    the upstream's fault (502), never our crash (500)."""
    try:
        yield
    except (LookupError, TypeError, ValueError, AttributeError) as e:
        raise MalformedAnswerError(f"the upstream's {what} is not in the completions shape "
                                   f"({type(e).__name__}: {str(e)[:120]})") from None


def _candidate(token: str, logprob: float, raw: Sequence[int] | None = None,
               token_id=None) -> Candidate:
    """`raw`: the chat shape's `bytes` (None where not reported); `token_id`: llama.cpp's
    server's `id`. vLLM's `return_tokens_as_token_ids` spells a token "token_id:N"; its chat
    `bytes` are then the token's own for the sampled entry but those of the spelling for the
    top candidates (dropped: the id is all there is)."""
    if token_id is None and token.startswith("token_id:") and token[9:].isdigit():
        spelt = raw is not None and bytes(raw) == token.encode()
        token_id, raw = int(token[9:]), None if spelt else raw
        token = "" if raw is None else bytes(raw).decode("utf-8", "replace")
    return Candidate(text=token, logprob=float(logprob),
                     raw=None if raw is None else bytes(raw),
                     id=token_id if isinstance(token_id, int) and token_id >= 0 else None)


def _usable(lp) -> bool:
    return lp is not None and math.isfinite(lp) and lp > _OUTSIDE_TOPK


def parse_positions(choice: dict, top_k: int) -> list[Position]:
    """Positions of one choice, each with its candidates best-first, cut to `top_k`.

    llama.cpp adds the sampled token when it is not among the top-k: extras are dropped so the
    target is always over exactly the k highest-logprob candidates (docs/design.md §1).
    """
    lp = choice.get("logprobs")
    if not lp:
        raise NoLogprobsError("the upstream answered without logprobs; it must support "
                              "`logprobs` on /v1/completions (see the provider profiles)")
    out: list[Position] = []
    if isinstance(lp.get("content"), list):  # chat shape
        for entry in lp["content"]:
            cands = [_candidate(t["token"], t["logprob"], t.get("bytes"), t.get("id"))
                     for t in entry.get("top_logprobs") or [] if _usable(t.get("logprob"))]
            sampled = _candidate(entry["token"], entry.get("logprob", _OUTSIDE_TOPK),
                                 entry.get("bytes"), entry.get("id"))
            out.append(Position(sorted(cands, key=lambda c: -c.logprob)[:top_k], sampled))
    else:  # legacy completions shape
        tokens = lp.get("tokens") or []
        token_lps = lp.get("token_logprobs") or []
        tops = lp.get("top_logprobs") or []
        if tokens and not tops:
            raise NoLogprobsError("the upstream returned tokens but no top_logprobs")
        for i, top in enumerate(tops):
            cands = [_candidate(t, v) for t, v in (top or {}).items() if _usable(v)]
            sampled = None
            if i < len(tokens):
                sampled = _candidate(tokens[i], token_lps[i] if i < len(token_lps) and
                                     token_lps[i] is not None else _OUTSIDE_TOPK)
            out.append(Position(sorted(cands, key=lambda c: -c.logprob)[:top_k], sampled))
    return out


def _error_message(resp: httpx.Response) -> tuple[str, str | None]:
    try:
        body = resp.json()
    except ValueError:
        return (resp.text or resp.reason_phrase)[:500], None
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        code = err.get("code")
        if not code and err.get("type") == "insufficient_quota":  # OpenAI puts it in both
            code = "insufficient_quota"
        return str(err.get("message") or err.get("detail") or err)[:500], code
    return str(err)[:500], None


def _retry_after(resp: httpx.Response) -> float | None:
    ms = resp.headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    s = resp.headers.get("retry-after")
    if s:
        try:
            return max(0.0, float(s))
        except ValueError:
            pass
        try:  # the HTTP-date form
            when = parsedate_to_datetime(s)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError, OverflowError):
            return None
    return None


def _count(x) -> int | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
        return None
    return int(x)


def reported_cached_tokens(data: dict) -> int | None:
    """Prompt tokens the upstream says its prompt cache served, or None when it says nothing.

    Shapes: `usage.prompt_tokens_details.cached_tokens` (OpenAI, vLLM with prompt-token details
    on, llama.cpp's C++ server since early 2026), `usage.prompt_cache_hit_tokens` (DeepSeek),
    top-level `timings.cache_n` (llama.cpp's C++ server since late 2025). llama-cpp-python
    reports none of them. A malformed value counts as not reported.
    """
    def field(obj, name):
        return obj.get(name) if isinstance(obj, dict) else None

    usage = data.get("usage")
    for found in (field(field(usage, "prompt_tokens_details"), "cached_tokens"),
                  field(usage, "prompt_cache_hit_tokens"),
                  field(data.get("timings"), "cache_n")):
        if (n := _count(found)) is not None:
            return n
    return None


def check_status(resp: httpx.Response) -> None:
    """Raise the typed error of an upstream's HTTP error answer (its body must be read)."""
    if resp.status_code >= 400:
        msg, code = _error_message(resp)
        cls = UpstreamHTTPError
        if resp.status_code in (400, 413, 422) and any(h in msg.lower() for h in _CONTEXT_HINTS):
            cls = ContextLengthError
        raise cls(resp.status_code, msg, retry_after=_retry_after(resp), error_code=code)


def usable_count(positions: list[Position], k: int, chat_shape: bool, first: bool) -> int:
    """How many of `positions` are usable: the report ends at the first stub position (too
    few candidates); at the very first position of an answer that is an error."""
    # The legacy dict shape collides tokens with the same text (llama-cpp-python prints every
    # special token and every partial UTF-8 token as ""), so a few missing there is normal.
    need = k if chat_shape else (k + 1) // 2
    for i, p in enumerate(positions):
        if len(p.candidates) < need:
            if i == 0 and first:
                raise TooFewCandidatesError(
                    f"the upstream returned {len(p.candidates)} logprob candidates where {k} "
                    f"were asked; lower --top-k or check the provider's logprobs limit")
            # llama-cpp-python finishing a partial UTF-8 character mid-answer reports stub
            # positions: the usable report ends before them.
            return i
    return len(positions)


def _usable_positions(choice: dict, k: int, max_tokens: int | None) -> list[Position]:
    """The choice's positions with k candidates asked, cut where the report stops being usable."""
    # llama-cpp-python may run past max_tokens to finish a partial UTF-8 character and then
    # reports a stub position for the extra token: keep only what was asked for.
    positions = parse_positions(choice, k)[:max_tokens]
    chat_shape = isinstance((choice.get("logprobs") or {}).get("content"), list)
    return positions[:usable_count(positions, k, chat_shape, first=True)]
