"""The operator's limits at work (`options.LimitOptions`; docs/design.md §5): what one request
may ask for, how many generations run at once, how long a request may take, and the end of
work nobody waits for any more.

A request over a limit is answered 400 before any upstream call; one that finds no room for its
generations 429 with Retry-After (a client backs off, and the host is not queued into the
ground); one past the deadline is cancelled and answered 504. A non-streamed request whose
client hangs up is cancelled as a stream is: no upstream call is made for nobody.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..errors import ConfigError
from ..options import LimitOptions
from .errors import DeadlineExceeded, Overloaded

log = logging.getLogger("vas_proxy.service")
T = TypeVar("T")


class LimitExceeded(ConfigError):
    code = "limit_exceeded"


class ClientGone(Exception):
    """The client disconnected before its non-streamed answer was ready."""


class Limits:
    """`options` None: no limits (`wrap`, in the caller's own process)."""

    def __init__(self, options: LimitOptions | None = None):
        self.options = options
        self.in_flight = 0  # generations admitted and not yet released

    @property
    def deadline(self) -> float | None:
        return self.options.deadline if self.options is not None else None

    def check(self, body) -> None:
        """Raise LimitExceeded when `body` asks for more than one request may."""
        o = self.options
        if o is None:
            return
        tokens_param = ("max_completion_tokens" if getattr(body, "max_completion_tokens", None)
                        else "max_tokens")
        checks = [(body.token_limit(), o.max_tokens, tokens_param, "--limit-max-tokens",
                   "tokens per choice"),
                  (body.n, o.n, "n", "--limit-n", "choices"),
                  (body.prompt_chars(), o.prompt_chars,
                   "messages" if hasattr(body, "messages") else "prompt",
                   "--limit-prompt-chars", "prompt characters"),
                  (body.generation_count(), o.generations, "n", "--limit-generations",
                   "generations at once (n × vas.best_of)")]
        for asked, limit, param, flag, what in checks:
            if asked > limit:
                raise LimitExceeded(f"this request asks for {asked} {what}; this server's limit "
                                    f"is {limit} ({flag})", param=param)

    def admit(self, count: int) -> Callable[[], None]:
        """Reserve `count` generations, or raise Overloaded; returns the (idempotent) release."""
        o = self.options
        if o is None:
            return lambda: None
        if self.in_flight + count > o.generations:
            raise Overloaded(f"the server is running {self.in_flight} of its {o.generations} "
                             f"generations; this request needs {count}: retry shortly")
        self.in_flight += count
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight -= count

        return release

    def past_deadline(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"the request ran past this server's deadline of "
                                f"{self.deadline:g}s (--limit-deadline) and was cancelled")


async def until_disconnect(receive: Callable[[], Awaitable[dict]]) -> None:
    """Return when the ASGI client disconnects (the body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def watched(work: Awaitable[T], receive: Callable[[], Awaitable[dict]],
                  deadline: float | None) -> T:
    """`await work`, cancelled when the client disconnects (ClientGone) or after `deadline`
    seconds (asyncio.TimeoutError)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(until_disconnect(receive))
    try:
        done, _ = await asyncio.wait({task, gone}, timeout=deadline,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        if gone in done:
            raise ClientGone()
        raise asyncio.TimeoutError()
    finally:
        for t in (task, gone):
            t.cancel()
        await asyncio.gather(task, gone, return_exceptions=True)
