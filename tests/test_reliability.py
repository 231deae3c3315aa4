"""The reliability suite's measurements as pass/fail checks, small (benchmarks/reliability.py
runs them at full size for the figures): `vas-proxy serve` processes over a fake upstream process,
because load, SIGKILL and leaks are properties of real processes and sockets."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "reliability.py"
_spec = importlib.util.spec_from_file_location("reliability", _PATH)
reliability = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reliability)


def test_load_without_errors_or_growing_fds():
    got = reliability.load(streams=8, seconds=4, max_tokens=8)
    assert got["requests"] >= 8, got
    assert got["errors"] == {}, got
    # fds: one per client connection and the upstream pool, flat after warm-up
    assert got["fds"]["end"] <= got["fds"]["start"] + 4, got
    # once the 5 s keep-alive has expired, the client and upstream sockets are closed
    assert got["fds"]["after_idle"] < got["fds"]["max"], got


def test_the_overhead_measurement_runs():
    """Not a timing check (benchmarks/reliability.py reports the ratios): each proxied
    request made exactly its 16 one-token upstream calls (asserted inside), all three loops
    were timed."""
    got = reliability.overhead(repeats=2)
    assert got["repeats"] == 2 and min(got["direct_s"], got["direct_aiohttp_s"],
                                       got["proxied_s"]) > 0, got


def test_sigkill_mid_stream_leaves_a_cache_that_replays(tmp_path):
    got = reliability.sigkill(tmp_path)
    assert got["check_warnings"] == [], got
    assert got["entries_after_kill"] >= 8, got  # the seeded answer's calls, at least
    assert got["replayed_same_text"], got
    assert got["replay_upstream_calls"] == 0 and got["replay_cache_hits"] >= 1, got


@pytest.mark.parametrize("cycles", [50])
def test_wrap_cycles_leak_no_threads_or_fds(cycles):
    got = reliability.wrap_cycles(cycles)
    assert got["leaked_threads"] == 0, got
    assert got["leaked_fds"] <= 0, got
