"""The embedded upstream always stops: context exit, exceptions, and a SIGKILLed parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx2 as httpx
import pytest

from vas_proxy.upstream.local import LocalUpstream


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def _wait_dead(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_stops_on_exception():
    up = LocalUpstream()
    with pytest.raises(RuntimeError):
        with up:
            pid = up._proc.pid
            assert httpx.get(f"{up.base_url}/models", timeout=5).status_code == 200
            raise RuntimeError("boom")
    assert _wait_dead(pid)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{up.base_url}/models", timeout=2)


def test_no_orphan_when_parent_is_killed():
    code = ("from vas_proxy.upstream.local import LocalUpstream\n"
            "import time\nup = LocalUpstream().start()\nprint(up._proc.pid, flush=True)\n"
            "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert _wait_dead(child), "the llama.cpp server outlived its SIGKILLed parent"


def test_ctrl_c_stops_the_server():
    code = ("from vas_proxy.upstream.local import LocalUpstream\n"
            "import time\nwith LocalUpstream() as up:\n    print(up._proc.pid, flush=True)\n"
            "    time.sleep(600)\n")
    # As a terminal's Ctrl-C: a test run started in the background (nohup, `&` in a script)
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler at all.
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGINT)
    parent.wait(timeout=60)  # stopping takes up to 10 s (SIGTERM) + 10 s (SIGKILL)
    assert _wait_dead(child)
