"""The one place that talks HTTP to upstreams: async `/v1/completions` with logprobs.

Parses both logprob shapes (docs/design.md §2): legacy completions (`top_logprobs` is a dict
token→logprob per position; two tokens with the same text collide) and chat (lists of
{token, logprob, bytes}). `-9999` marks "outside the top-k" on some servers and is dropped.
Calls are retried (`retry.py`) and reproducible answers are cached (`cache.py`). `parse` is the
one reader of an answer's `usage`, including the prompt-cache counts some upstreams report
(`reported_cached_tokens`), which price models need (`vas_proxy.prices`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime

import httpx2 as httpx

from ..defaults import PROVIDER, TIMEOUT
from ..errors import (ContextLengthError, NoLogprobsError, TooFewCandidatesError,
                      UpstreamError, UpstreamHTTPError, UpstreamTimeout, UpstreamUnreachable)
from ..protocol import Candidate, Position, UpstreamResult
from .cache import DEFAULT_SIZE_LIMIT, ResponseCache, cache_key, cacheable
from .profiles import Profile, get_profile
from .retry import RetryPolicy, call_with_retry

_OUTSIDE_TOPK = -9999.0
_CONTEXT_HINTS = ("context window", "context length", "exceed", "too long", "n_ctx",
                  "maximum context")


def _candidate(token: str, logprob: float, raw: Sequence[int] | None = None) -> Candidate:
    return Candidate(text=token, logprob=float(logprob), raw=bytes(raw) if raw else b"")


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
            cands = [_candidate(t["token"], t["logprob"], t.get("bytes"))
                     for t in entry.get("top_logprobs") or [] if _usable(t.get("logprob"))]
            sampled = _candidate(entry["token"], entry.get("logprob", _OUTSIDE_TOPK), entry.get("bytes"))
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


class UpstreamClient:
    """Async client of one upstream (base URL ending in /v1, model name, provider profile).

    The API key only ever goes into the Authorization header: never into errors, logs or cache
    keys. `timeout` bounds each attempt; `retry` (default `RetryPolicy()`) says how failed
    attempts are retried; with `use_cache`, reproducible answers (see `cache.cacheable`) are kept
    in `cache_dir` (default `cache.default_cache_dir()`, opened on first use), at most
    `cache_size_limit` bytes.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 profile: str | Profile = PROVIDER, timeout: float = TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None,
                 cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                 retry: RetryPolicy | None = None, cache_size_limit: int = DEFAULT_SIZE_LIMIT):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self.profile.check()
        self.retry = retry if retry is not None else RetryPolicy()
        self.cache = ResponseCache(cache_dir, size_limit=cache_size_limit) if use_cache else None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout,
                                       transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()
        if self.cache is not None:
            await self.cache.aclose()

    async def __aenter__(self) -> "UpstreamClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def _send(self, method: str, path: str, body: dict | None = None) -> dict:
        """One attempt, failures as typed errors."""
        try:
            resp = await self._http.request(method, path, json=body)
        except httpx.TimeoutException as e:
            raise UpstreamTimeout(f"upstream {self.base_url} timed out ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise UpstreamUnreachable(f"cannot reach upstream {self.base_url}: {e}") from None
        if resp.status_code >= 400:
            msg, code = _error_message(resp)
            cls = UpstreamHTTPError
            if resp.status_code in (400, 413, 422) and any(h in msg.lower() for h in _CONTEXT_HINTS):
                cls = ContextLengthError
            raise cls(resp.status_code, msg, retry_after=_retry_after(resp), error_code=code)
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise UpstreamError(f"upstream {self.base_url} answered with invalid JSON")
        return data

    async def _post(self, path: str, body: dict) -> dict:
        return await call_with_retry(self.retry, lambda: self._send("POST", path, body))

    async def models(self) -> list[str]:
        data = await call_with_retry(self.retry, lambda: self._send("GET", "/models"))
        return [m["id"] for m in data.get("data", [])]

    async def complete(self, prompt: str | list[int], *, max_tokens: int, top_k: int,
                       temperature: float = 1.0, seed: int | None = None,
                       stop: list[str] | None = None, extra: dict | None = None,
                       model: str | None = None, cache: bool = True, n: int = 1
                       ) -> UpstreamResult:
        """One `/v1/completions` call asking for `top_k` logprobs at each generated position
        (`top_k=0`: text only, no positions; llama-cpp-python sorts the whole vocabulary in
        Python for each reported position, which makes logprobs cost ~3x the sampling itself).

        A reproducible request (a seed, or temperature 0) is answered from the cache when it can
        be (`cached=True`, with the billed token counts of the original answer); `cache=False`
        skips the cache for this call (e.g. random seeds that will never repeat). `n` > 1 asks
        for n choices in one call (sent only then, so n = 1 bodies and cache keys are as
        before); positions are choice 0's, every choice's text is in `choices`.
        """
        k = self.profile.clamp_top_k(top_k) if top_k else 0
        body = {"model": model or self.model, "prompt": prompt, "max_tokens": max_tokens,
                "temperature": temperature, "stream": False,
                **self.profile.sampler_params, **(extra or {})}
        if k:
            body["logprobs"] = k
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = stop
        if n > 1:
            body["n"] = n
        sent = prompt if isinstance(prompt, str) else ""  # token ids: no text to compare
        key = None
        if cache and self.cache is not None and cacheable(body):
            key = cache_key(self.base_url, "/completions", body)
            data = await self.cache.aget(key)
            if data is not None:
                try:
                    res = self.parse(data, k, max_tokens)
                except (UpstreamError, LookupError, TypeError, ValueError, AttributeError):
                    await self.cache.adelete(key)  # stored by an older parser or damaged: refetch
                else:
                    res.cached, res.prompt = True, sent
                    return res
        data = await self._post("/completions", body)
        res = self.parse(data, k, max_tokens)
        res.prompt = sent
        if key is not None:
            await self.cache.aset(key, data)
        return res

    def parse(self, data: dict, k: int, max_tokens: int | None = None) -> UpstreamResult:
        """The answer's text, finish reason, billed tokens and (k > 0) its usable positions;
        the only place that reads the answer's `usage`."""
        choices = data.get("choices") or []
        if not choices:
            raise UpstreamError("the upstream answered with no choices")
        # vLLM and OpenAI number the choices of an n > 1 answer; keep their order, not the list's
        choices = sorted(choices, key=lambda c: c["index"] if isinstance(c.get("index"), int)
                         else 0)
        choice = choices[0]
        usage = data.get("usage") or {}
        return UpstreamResult(positions=_usable_positions(choice, k, max_tokens) if k else [],
                              text=choice.get("text", ""),
                              finish_reason=choice.get("finish_reason"),
                              prompt_tokens=int(usage.get("prompt_tokens") or 0),
                              completion_tokens=int(usage.get("completion_tokens") or 0),
                              cached_tokens=reported_cached_tokens(data),
                              choices=[(c.get("text", ""), c.get("finish_reason"))
                                       for c in choices])


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


def _usable_positions(choice: dict, k: int, max_tokens: int | None) -> list[Position]:
    """The choice's positions with k candidates asked, cut where the report stops being usable."""
    # llama-cpp-python may run past max_tokens to finish a partial UTF-8 character and then
    # reports a stub position for the extra token: keep only what was asked for.
    positions = parse_positions(choice, k)[:max_tokens]
    # The legacy dict shape collides tokens with the same text (llama-cpp-python prints every
    # special token and every partial UTF-8 token as ""), so a few missing there is normal.
    chat_shape = isinstance((choice.get("logprobs") or {}).get("content"), list)
    need = k if chat_shape else (k + 1) // 2
    for i, p in enumerate(positions):
        if len(p.candidates) < need:
            if i == 0:
                raise TooFewCandidatesError(
                    f"the upstream returned {len(p.candidates)} logprob candidates where {k} "
                    f"were asked; lower --top-k or check the provider's logprobs limit")
            # llama-cpp-python finishing a partial UTF-8 character mid-answer reports stub
            # positions: the usable report ends before them.
            return positions[:i]
    return positions
