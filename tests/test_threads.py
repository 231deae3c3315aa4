"""torch's CPU threads for the value models (values/threads.py): process-global, so each case
runs in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SHOW = """
import torch
from vas_proxy.errors import ConfigError
from vas_proxy.values.threads import configure_cpu_threads
torch.set_num_threads(2)
try:
    configure_cpu_threads()
    first = torch.get_num_threads()
    torch.set_num_threads(2)
    configure_cpu_threads()  # once per process: the second call changes nothing
except ConfigError as exc:
    print("error:", exc.message)
else:
    print(first, torch.get_num_threads())
"""


def _threads(value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "VAS_PROXY_TORCH_THREADS"}
    if value is not None:
        env["VAS_PROXY_TORCH_THREADS"] = value
    res = subprocess.run([sys.executable, "-c", SHOW], capture_output=True, text=True,
                         env=env, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_the_variable_sets_the_count_once_per_process():
    assert _threads("1") == "1 2"
    assert _threads("3") == "3 2"  # the variable may raise the count too


def test_default_is_half_the_cores_never_more_than_torch_had():
    half = max(1, (os.cpu_count() or 2) // 2)
    assert _threads(None) == f"{min(half, 2)} 2"


@pytest.mark.parametrize("bad", ["zero", "0", "-2", "1.5"])
def test_bad_values_are_a_config_error(bad):
    assert _threads(bad) == \
        f"error: $VAS_PROXY_TORCH_THREADS must be a positive integer, got {bad!r}"
