"""torch's CPU thread count: process-global state, set once, by the first CPU value model."""

from __future__ import annotations

import os

import torch

from ..env import TORCH_THREADS, torch_threads
from ..errors import ConfigError

_THREADS_SET = False


def configure_cpu_threads() -> None:
    """Give torch half the cores (or $VAS_PROXY_TORCH_THREADS), once per process.

    The value model shares the CPU with the upstream (the embedded llama.cpp server, the event
    loop): with every core claimed, OpenMP's spinning workers starve each other and a scoring
    step took 2.8 s instead of 0.19 s on 2 cores (measured with 2 vs 1 torch threads)."""
    global _THREADS_SET
    if _THREADS_SET:
        return
    want = torch_threads()
    n = _parse(want) if want else max(1, (os.cpu_count() or 2) // 2)
    _THREADS_SET = True
    if n < torch.get_num_threads() or want:
        torch.set_num_threads(n)


def _parse(want: str) -> int:
    try:
        n = int(want)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"${TORCH_THREADS} must be a positive integer, got {want!r}")
    return n
