"""A streamed completion call read position by position, so the value model can score position
i while the upstream is still making position i + 1, and the call can be cut short (closing the
stream cancels the generation) when a draft is rejected (docs/design.md §3.5).

Exact: a stream reports the same positions, drawn with the same seed, as the whole answer
would; reading them early changes nothing the upstream does. What it changes is the bill's
bookkeeping: llama-cpp-python sends no usage in a stream (OpenAI and vLLM do with
`stream_options.include_usage`, which we ask for), and a cancelled stream never sends it. Then
`usage` is None and the caller estimates (the engine: the prompt as one call earlier counted it
plus the tokens generated since; completions: the positions read).
"""

from __future__ import annotations

import json
from typing import Any

import httpx2 as httpx

from ..errors import UpstreamError
from ..protocol import Position
from .retry import call_with_retry
from .wire import (answer_shape, check_status, parse_positions, reported_cached_tokens,
                   usable_count)


class PositionStream:
    """`async with client.stream_positions(...) as s: async for pos in s: ...`. Opening is
    retried like any call (until the first byte); after that an error is raised as is. After
    the stream, `usage` (the upstream's, or None) and `finish_reason` say how it ended."""

    def __init__(self, client: Any, body: dict, k: int, max_tokens: int):
        # `client`: the UpstreamClient that made it (its http client, retry policy and error
        # mapping; not imported: the client imports this module)
        self.client, self.body, self.k, self.max_tokens = client, body, k, max_tokens
        self.usage: dict | None = None
        self.cached_tokens: int | None = None
        self.finish_reason: str | None = None
        self.read = 0  # usable positions yielded
        self._resp: httpx.Response | None = None
        self._ended = False

    async def _open(self) -> httpx.Response:
        http = self.client._http
        with self.client.transport_errors():
            resp = await http.send(http.build_request("POST", "/completions", json=self.body),
                                   stream=True)
        if resp.status_code >= 400:
            try:
                with self.client.transport_errors():
                    await resp.aread()
            finally:
                await resp.aclose()
            check_status(resp)
        return resp

    async def __aenter__(self) -> "PositionStream":
        self._resp = await call_with_retry(self.client.retry, self._open)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading; an upstream still generating sees the disconnect and stops."""
        resp, self._resp = self._resp, None
        if resp is not None:
            await resp.aclose()

    async def __aiter__(self):
        if self._resp is None:
            raise RuntimeError("open the stream with `async with` first")
        with self.client.transport_errors():
            async for line in self._resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                for pos in self._positions(data):
                    yield pos
                if self._ended:
                    return

    def _positions(self, data: str) -> list[Position]:
        try:
            chunk = json.loads(data)
        except ValueError:
            raise UpstreamError("the upstream's stream sent invalid JSON") from None
        if not isinstance(chunk, dict):
            raise UpstreamError("the upstream's stream sent a chunk that is not an object")
        if isinstance(chunk.get("error"), dict):
            raise UpstreamError(f"the upstream's stream failed: "
                                f"{str(chunk['error'].get('message'))[:300]}")
        with answer_shape("stream"):
            return self._chunk_positions(chunk)

    def _chunk_positions(self, chunk: dict) -> list[Position]:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
            self.cached_tokens = reported_cached_tokens(chunk)
        out: list[Position] = []
        for choice in chunk.get("choices") or []:
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            lp = choice.get("logprobs")
            if not lp or self._ended:
                continue
            positions = parse_positions(choice, self.k)
            chat = isinstance(lp.get("content"), list)
            usable = usable_count(positions, self.k, chat, first=self.read == 0)
            # llama-cpp-python may run past max_tokens to finish a partial UTF-8 character
            usable = min(usable, self.max_tokens - self.read)
            out += positions[:usable]
            self.read += usable
            if usable < len(positions):
                self._ended = True  # a stub position: the usable report ends here
        return out
