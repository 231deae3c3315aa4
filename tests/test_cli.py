"""`vas-proxy generate`: the text on stdout, and one actionable line on stderr for bad input."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from vas_proxy.upstream.local import free_port

TESTS = Path(__file__).parent


def cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "vas_proxy", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def assert_user_error(res, *needles):
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_generate_is_seeded(upstream):
    args = ["generate", "Name a colour.", "--upstream", upstream.base_url, "--model",
            upstream.model, "--chat-template", "chatml", "--value", "h=py:valuefns:char_hash",
            "--beta", "2", "--max-tokens", "8", "--seed", "11", "-q"]
    a, b = cli(*args), cli(*args)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.strip()
    assert a.stderr == ""  # -q: nothing but the answer


def test_unknown_value_spec():
    assert_user_error(cli("generate", "hi", "--value", "x=nope:thing"), "unknown value spec form")
    assert_user_error(cli("generate", "hi", "--value", "x=py:no_such_module:f"), "cannot import")
    assert_user_error(cli("generate", "hi", "--value", "justaspec"), "NAME=SPEC")


def test_missing_and_mismatched_checkpoint(tmp_path):
    assert_user_error(cli("generate", "hi", "--value", f"x={tmp_path}/absent"), "no such checkpoint")
    (tmp_path / "vas_value.json").write_text(json.dumps({"format": "something-else"}))
    res = cli("generate", "hi", "--value", f"x={tmp_path}")
    assert_user_error(res, str(tmp_path))


def test_unreachable_upstream():
    res = cli("generate", "hi", "--upstream", f"http://127.0.0.1:{free_port()}/v1", "--model",
              "m", "--value", "h=py:valuefns:char_hash")
    assert_user_error(res, "cannot reach upstream")


def test_prompt_longer_than_context(upstream):
    res = cli("generate", "hello " * 4000, "--upstream", upstream.base_url, "--model",
              upstream.model, "--value", "h=py:valuefns:char_hash", "--raw")
    assert_user_error(res, "context length")


class _NoLogprobs(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        body = json.dumps({"choices": [{"text": "x", "index": 0, "logprobs": None,
                                        "finish_reason": "length"}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def no_logprobs_upstream():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoLogprobs)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_upstream_without_logprobs(no_logprobs_upstream):
    res = cli("generate", "hi", "--upstream", no_logprobs_upstream, "--model", "m",
              "--value", "h=py:valuefns:char_hash")
    assert_user_error(res, "without logprobs")


def test_bad_flags_exit_2():
    res = cli("generate", "hi", "--top-k", "zero")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert_user_error(cli("generate", "hi", "--top-k", "0", "--value", "h=py:valuefns:char_hash"),
                      "top_k")
