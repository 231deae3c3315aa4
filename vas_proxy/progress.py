"""Progress on stderr for slow steps, so stdout stays the answer."""

from __future__ import annotations

import contextlib
import sys
import time


@contextlib.contextmanager
def step(message: str, *, enabled: bool = True):
    """Print `message…` before a slow step and its duration after, on stderr."""
    if not enabled:
        yield
        return
    print(f"{message}…", end="", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        yield
    except BaseException:
        print(" failed", file=sys.stderr, flush=True)
        raise
    print(f" done ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
