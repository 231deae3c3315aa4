"""Retries of upstream calls (docs/design.md §2): which failures are worth another try, and
how long to wait.

Retried: 408, 409, 429 and 5xx answers, connection errors and timeouts. Never retried: other 4xx
(the request itself is wrong; another try cannot help) and a 429 whose code is
`insufficient_quota` (the account is out of credit, waiting will not refill it). Waits grow
exponentially with jitter, as openai-python does (`_base_client.py`: wait in [0.75·b, b]), and
the upstream's `Retry-After` / `retry-after-ms` replaces the backoff when given. The time spent
(attempts and waits together) is capped, so that an upstream that stays down or hangs fails
fast with one line saying how many attempts were made: a call that timed out after the whole
budget is not tried again. Each attempt's own duration is bounded by the HTTP client's timeout.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from ..errors import UpstreamError, UpstreamHTTPError, UpstreamUnreachable

log = logging.getLogger("vas_proxy.upstream")
T = TypeVar("T")
RETRY_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry. `total_wait` caps the seconds from the first attempt
    after which no new attempt starts (attempts and waits both count)."""

    max_attempts: int = 3
    initial_wait: float = 0.5
    max_wait: float = 8.0
    total_wait: float = 30.0
    jitter: float = 0.25  # each backoff wait is drawn from [(1 - jitter)·b, b]

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1")
        if min(self.initial_wait, self.max_wait, self.total_wait) < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("RetryPolicy waits must be >= 0 and jitter in [0, 1]")

    @classmethod
    def none(cls) -> "RetryPolicy":
        """One attempt, no retry (tests, or callers that retry themselves)."""
        return cls(max_attempts=1, total_wait=0.0)

    def backoff(self, retry: int) -> float:
        """Wait before retry number `retry` (1 = the first retry), jitter included."""
        b = min(self.max_wait, self.initial_wait * 2.0 ** (retry - 1))
        return b * (1.0 - self.jitter * random.random())


def retryable(exc: BaseException) -> bool:
    """Whether another attempt could succeed where `exc` failed (docs/design.md §2)."""
    if isinstance(exc, UpstreamHTTPError):
        if exc.status == 429 and exc.error_code == "insufficient_quota":
            return False
        return exc.status in RETRY_STATUSES or exc.status >= 500
    return isinstance(exc, UpstreamUnreachable)  # connection errors and UpstreamTimeout


async def call_with_retry(policy: RetryPolicy, fn: Callable[[], Awaitable[T]]) -> T:
    """`await fn()` under `policy`; on giving up, raise its last error saying how hard we tried."""
    t0 = time.monotonic()
    try:  # the common case, one attempt that succeeds, without tenacity's per-call machinery
        return await fn()
    except UpstreamError as e:
        if not retryable(e) or policy.max_attempts <= 1:
            raise
        replay: UpstreamError | None = e  # tenacity's attempt 1: it decides the wait from it
    too_long: list[float] = []  # a Retry-After that did not fit the remaining budget

    def wait(rs: tenacity.RetryCallState) -> float:
        left = policy.total_wait - (time.monotonic() - t0)
        after = getattr(rs.outcome.exception(), "retry_after", None)
        if after is not None and after >= 0:
            if after > left and rs.attempt_number < policy.max_attempts:
                too_long.append(after)
            return after
        return max(0.0, min(policy.backoff(rs.attempt_number), left))

    def stop(rs: tenacity.RetryCallState) -> bool:
        return (rs.attempt_number >= policy.max_attempts or bool(too_long)
                or time.monotonic() - t0 >= policy.total_wait)

    def before_sleep(rs: tenacity.RetryCallState) -> None:
        log.warning("upstream call failed (%s); retry %d/%d in %.2fs", rs.outcome.exception(),
                    rs.attempt_number, policy.max_attempts - 1, rs.upcoming_sleep)

    attempts = 0

    async def attempt() -> T:
        nonlocal attempts, replay
        attempts += 1
        if replay is not None:
            err, replay = replay, None
            raise err
        return await fn()

    retrying = tenacity.AsyncRetrying(
        stop=stop, wait=wait, retry=tenacity.retry_if_exception(retryable),
        before_sleep=before_sleep, reraise=True, sleep=asyncio.sleep)
    try:
        return await retrying(attempt)
    except UpstreamError as e:
        if retryable(e) and (attempts > 1 or too_long):
            why = (f"; the upstream asked to retry after {too_long[0]:g}s, beyond the "
                   f"{policy.total_wait:g}s retry budget" if too_long else "")
            _annotate(e, f"(gave up after {attempts} attempt{'s' * (attempts > 1)} in "
                         f"{time.monotonic() - t0:.1f}s{why})")
        raise


def _annotate(e: UpstreamError, note: str) -> None:
    e.message = f"{e.message} {note}"
    e.args = (e.message,)
