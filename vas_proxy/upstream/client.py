"""The one place that talks HTTP to upstreams: async `/v1/completions` with logprobs.

The wire shapes it parses are in `wire.py`; streamed calls, read position by position, in
`streaming.py`. Calls are retried (`retry.py`) and reproducible answers are cached (`cache.py`). `parse` is the
one reader of an answer's `usage`, including the prompt-cache counts some upstreams report
(`reported_cached_tokens`), which price models need (`vas_proxy.prices`).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING

import httpx2 as httpx

from ..defaults import CACHE_TTL, PROVIDER, TIMEOUT
from ..errors import (UpstreamError, UpstreamTimeout,
                      UpstreamUnreachable)
from ..protocol import UpstreamResult
from ..redact import redact, redact_url, register_secret
from .aio_http import fast_http
from .cache import DEFAULT_SIZE_LIMIT, cache_key, cacheable, open_cache
from .continuation import ChatPrompt, chat_body, sent_text
from .profiles import Profile, get_profile
from .retry import RetryPolicy, call_with_retry
from .tokenizer import RemoteTokenizer
from .wire import (_usable_positions, answer_shape, check_status, parse_positions,  # noqa: F401 (re-export)
                   reported_cached_tokens)

if TYPE_CHECKING:
    from .streaming import PositionStream

class UpstreamClient:
    """Async client of one upstream (base URL ending in /v1, model name, provider profile).

    The API key only ever goes into the Authorization header: never into errors, logs or cache
    keys. `timeout` bounds each attempt; `retry` (default `RetryPolicy()`) says how failed
    attempts are retried; with `use_cache`, reproducible answers (see `cache.cacheable`) are kept
    in `cache_dir` (a directory, default `cache.default_cache_dir()`, opened on first use, at
    most `cache_size_limit` bytes; or a redis:// URL shared by replicas) for `cache_ttl` s.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 profile: str | Profile = PROVIDER, timeout: float = TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None,
                 cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                 retry: RetryPolicy | None = None, cache_size_limit: int = DEFAULT_SIZE_LIMIT,
                 cache_ttl: float | None = CACHE_TTL):
        self.base_url = base_url.rstrip("/")
        self.shown_url = redact_url(self.base_url)  # for messages: never its credentials
        register_secret(api_key)
        self.model = model
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self.profile.check()
        self.retry = retry if retry is not None else RetryPolicy()
        self.cache = (open_cache(cache_dir, size_limit=cache_size_limit, ttl=cache_ttl)
                      if use_cache else None)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout,
                                       transport=transport)
        self._fast = fast_http(self.base_url, headers, timeout, self.shown_url, transport)
        self.tokenizer = RemoteTokenizer(self)

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._fast is not None:
            await self._fast.aclose()
        if self.cache is not None:
            await self.cache.aclose()

    async def __aenter__(self) -> "UpstreamClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def _send(self, method: str, path: str, body: dict | None = None) -> dict:
        """One attempt, failures as typed errors (aiohttp for a plain-HTTP upstream:
        `aio_http.py` says why)."""
        if self._fast is not None:
            status, headers, content = await self._fast.request(method, path, body)
            if status >= 400:  # in httpx's shape for the one reader of error answers; aiohttp
                # has already decompressed the body, so its content-encoding no longer applies
                headers = {k: v for k, v in headers.items() if k.lower() != "content-encoding"}
                check_status(httpx.Response(status, headers=headers, content=content))
        else:
            with self.transport_errors():
                resp = await self._http.request(method, path, json=body)
            check_status(resp)
            content = resp.content
        try:
            data = json.loads(content)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise UpstreamError(f"upstream {self.shown_url} answered with invalid JSON")
        return data

    @contextlib.contextmanager
    def transport_errors(self):
        """httpx's timeouts and connection failures as our typed, retryable errors."""
        try:
            yield
        except httpx.TimeoutException as e:
            raise UpstreamTimeout(f"upstream {self.shown_url} timed out "
                                  f"({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise UpstreamUnreachable(
                redact(f"cannot reach upstream {self.shown_url}: {e}")) from None

    def stream_positions(self, prompt: str | list[int], *, max_tokens: int, top_k: int,
                         temperature: float = 1.0, seed: int | None = None,
                         model: str | None = None) -> "PositionStream":
        """A streamed `/v1/completions` call whose positions can be read as the upstream makes
        them (and the call cancelled by closing it): see `upstream/streaming.py`. Never cached:
        a cancelled stream is not the whole answer."""
        from .streaming import PositionStream  # noqa: F811

        k = self.profile.clamp_top_k(top_k)
        body = {"model": model or self.model, "prompt": prompt, "max_tokens": max_tokens,
                "temperature": temperature, "stream": True, "logprobs": k,
                "stream_options": {"include_usage": True}, **self.profile.sampler_params,
                **self._id_fields(prompt)}
        if seed is not None:
            body["seed"] = seed
        return PositionStream(self, body, k, max_tokens)

    async def _post(self, path: str, body: dict) -> dict:
        return await call_with_retry(self.retry, lambda: self._send("POST", path, body))

    async def models(self) -> list[str]:
        data = await call_with_retry(self.retry, lambda: self._send("GET", "/models"))
        return [m["id"] for m in data.get("data", [])]

    async def tokenize(self, text: str) -> list[int]:
        """The upstream's own token ids of `text` (its /tokenize: upstream/tokenizer.py)."""
        return await self.tokenizer.tokenize(text)

    async def apply_template(self, messages: list[dict]) -> str:
        """The upstream's own chat template applied to `messages` with the generation prompt
        (llama.cpp's server: POST /apply-template): its template, never published otherwise."""
        return await self.tokenizer.apply_template(messages)

    async def props(self) -> dict:
        """What the upstream says of itself (llama.cpp's server: GET /props: its chat
        template, end token, slots); {} where it has no such route."""
        if self.profile.tokenizer != "llama.cpp":
            return {}
        root = self.base_url.removesuffix("/v1")
        return await call_with_retry(self.retry, lambda: self._send("GET", root + "/props"))

    def _id_fields(self, prompt) -> dict:
        """vLLM answers a token-id prompt's logprobs with ids only when asked; their texts are
        learnt by `self.tokenizer.name` (upstream/tokenizer.py), which the engine calls."""
        if isinstance(prompt, list) and self.profile.tokenizer == "vllm":
            return {"return_tokens_as_token_ids": True}
        return {}

    async def complete(self, prompt: str | list[int] | ChatPrompt, *, max_tokens: int,
                       top_k: int,
                       temperature: float = 1.0, seed: int | None = None,
                       stop: list[str] | None = None, extra: dict | None = None,
                       model: str | None = None, cache: bool = True, n: int = 1
                       ) -> UpstreamResult:
        """One `/v1/completions` call asking for `top_k` logprobs at each generated position
        (`top_k=0`: text only, no positions; llama-cpp-python sorts the whole vocabulary in
        Python for each reported position, which makes logprobs cost ~3x the sampling itself).
        `prompt`: text, token ids, or a `ChatPrompt`, which goes to `/v1/chat/completions` with
        its partial answer marked in the profile's prefill style (upstream/continuation.py).

        A reproducible request (a seed, or temperature 0) is answered from the cache when it can
        be (`cached=True`, with the billed token counts of the original answer); `cache=False`
        skips the cache for this call (e.g. random seeds that will never repeat). `n` > 1 asks
        for n choices in one call (sent only then, so n = 1 bodies and cache keys are as
        before); positions are choice 0's, every choice's text is in `choices`.
        """
        k = self.profile.clamp_top_k(top_k) if top_k else 0
        chat = isinstance(prompt, ChatPrompt)
        path = "/chat/completions" if chat else "/completions"
        fields = (chat_body(prompt, self.profile.chat_prefill or "trailing", k) if chat
                  else {"prompt": prompt})
        body = {"model": model or self.model, **fields, "max_tokens": max_tokens,
                "temperature": temperature, "stream": False,
                **self.profile.sampler_params, **self._id_fields(prompt), **(extra or {})}
        if k and not chat:
            body["logprobs"] = k
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = stop
        if n > 1:
            body["n"] = n
        sent = sent_text(prompt)
        prefill = prompt.prefill if chat and self.profile.chat_echoes_prefill else ""
        key = None
        if cache and self.cache is not None and cacheable(body):
            key = cache_key(self.base_url, path, body)
            data = await self.cache.aget(key)
            if data is not None:
                try:
                    res = self.parse(data, k, max_tokens, prefill)
                except (UpstreamError, LookupError, TypeError, ValueError, AttributeError):
                    await self.cache.adelete(key)  # stored by an older parser or damaged: refetch
                else:
                    res.cached, res.prompt = True, sent
                    return res
        data = await self._post(path, body)
        res = self.parse(data, k, max_tokens, prefill)
        res.prompt = sent
        if key is not None:
            await self.cache.aset(key, data)
        return res

    def parse(self, data: dict, k: int, max_tokens: int | None = None,
              prefill: str = "") -> UpstreamResult:
        """The answer's text, finish reason, billed tokens and (k > 0) its usable positions;
        the only place that reads the answer's `usage`. A chat answer's text is its message's
        content, less the `prefill` an upstream repeats there (llama.cpp's server does)."""
        with answer_shape():
            return self._parse(data, k, max_tokens, prefill)

    def _parse(self, data: dict, k: int, max_tokens: int | None, prefill: str
               ) -> UpstreamResult:
        choices = data.get("choices") or []
        if not choices:
            raise UpstreamError("the upstream answered with no choices")
        # vLLM and OpenAI number the choices of an n > 1 answer; keep their order, not the list's
        choices = sorted(choices, key=lambda c: c["index"] if isinstance(c.get("index"), int)
                         else 0)
        choice = choices[0]
        usage = data.get("usage") or {}

        def text(c: dict) -> str:
            if "message" not in c:
                return c.get("text", "")
            content = (c["message"] or {}).get("content") or ""
            return content[len(prefill):] if prefill and content.startswith(prefill) else content

        held = self.profile.partial_sample_drops_logprobs and choice.get("logprobs") is None
        return UpstreamResult(positions=_usable_positions(choice, k, max_tokens)
                              if k and not held else [],
                              text=text(choice),
                              finish_reason=choice.get("finish_reason"),
                              prompt_tokens=int(usage.get("prompt_tokens") or 0),
                              completion_tokens=int(usage.get("completion_tokens") or 0),
                              cached_tokens=reported_cached_tokens(data),
                              choices=[(text(c), c.get("finish_reason")) for c in choices])
