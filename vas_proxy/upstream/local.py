"""The embedded local upstream on the SmolLM2 GGUF: llama.cpp's C++ server (`llama-server`,
where built: scripts/build-llama-server.sh) or llama-cpp-python's OpenAI-compatible server.

`LocalUpstream` is a context manager that starts the server on a free loopback port, waits until
it answers, and always stops it: the server runs in its own process group which is terminated
(then killed) on exit, exception or Ctrl-C; on Linux the child also gets PR_SET_PDEATHSIG so a
SIGKILLed parent leaves no orphan.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx

from .. import env
from ..assets import smollm2_gguf
from ..errors import ConfigError, UpstreamUnreachable

LOCAL_MODEL_NAME = "smollm2-135m-instruct"
SERVERS = ("llama-server", "llama-cpp-python")
# The provider profile of each embedded server
PROFILE = {"llama-server": "llama-server", "llama-cpp-python": "llamacpp"}


def default_server() -> str:
    """The embedded default: llama.cpp's own server where its binary is found (exact end
    tokens and token-id prompts; faster: docs/bench/servers.json), else llama-cpp-python."""
    return "llama-server" if env.llama_server_binary() else "llama-cpp-python"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _child_setup() -> None:  # runs in the child between fork and exec
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            PR_SET_PDEATHSIG = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _digest(path: Path) -> str:
    """12 hex digits of the file's sha256 ("missing" when there is none: start() says so)."""
    import hashlib

    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()[:12]
    except OSError:
        return "missing"


class LocalUpstream:
    """Run `server` ("llama-cpp-python": `python -m llama_cpp.server`; "llama-server": llama.cpp's
    binary with `slots` parallel slots) on the bundled GGUF (or `model_path`) for the `with`
    block. Attributes once started: `base_url` (ending in /v1), `model` (the served model
    alias), `profile` (its provider profile's name).
    """

    def __init__(self, model_path: str | Path | None = None, *, host: str = "127.0.0.1",
                 port: int | None = None, n_ctx: int = 2048, n_threads: int | None = None,
                 startup_timeout: float = 120.0, model_alias: str = LOCAL_MODEL_NAME,
                 extra_args: list[str] | None = None, deterministic: bool = True,
                 server: str = "llama-cpp-python", slots: int = 1,
                 lora: str | Path | None = None):
        if server not in SERVERS:
            raise ConfigError(f"unknown embedded server {server!r}: use {' or '.join(SERVERS)}")
        self.server, self.slots = server, slots
        self.profile = PROFILE[server]
        self.model_path = Path(model_path) if model_path else None
        self.host, self.port = host, port
        self.n_ctx, self.n_threads = n_ctx, n_threads
        self.startup_timeout = startup_timeout
        # A LoRA adapter GGUF applied to the model (a tuned model from `vas-proxy baseline rl`).
        # The alias names it, so no cache or client mistakes the tuned model for the base.
        self.lora = Path(lora) if lora else None
        self.model = model_alias if lora is None else f"{model_alias}+lora-{_digest(self.lora)}"
        self.extra_args = list(extra_args or [])
        self.deterministic = deterministic
        self.state_cache_bytes = 1 << 30
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _llama_server_cmd(self, path: Path) -> list[str]:
        binary = env.llama_server_binary()
        if binary is None:
            raise ConfigError("llama.cpp's llama-server is not built: run "
                              "scripts/build-llama-server.sh .venv/bin (make does), or set "
                              f"{env.LLAMA_SERVER}")
        # One context per slot (-np N splits -c N ways, so each slot keeps n_ctx); no web UI;
        # the metrics and slot routes stay off. Prompt caching per slot is on by default.
        cmd = [binary, "--model", str(path), "--alias", self.model, "--host", self.host,
               "--port", str(self.port), "--ctx-size", str(self.n_ctx * self.slots),
               "--parallel", str(self.slots), "--no-webui", "--log-disable"]
        if self.n_threads:
            cmd += ["--threads", str(self.n_threads)]
        if self.lora:
            cmd += ["--lora", str(self.lora)]
        if self.deterministic:
            # as for llama-cpp-python below: one token per physical batch, so logprobs do not
            # depend on how the prompt was split between the prefix cache and a new batch
            cmd += ["--ubatch-size", "1"]  # (--batch-size 1 aborts its warm-up)
        return cmd + self.extra_args

    def start(self) -> "LocalUpstream":
        path = self.model_path or smollm2_gguf()
        if self.lora and not self.lora.is_file():
            raise ConfigError(f"adapter {self.lora} does not exist (a LoRA GGUF, e.g. a "
                              "`vas-proxy baseline rl` run's adapter.gguf)")
        self.port = self.port or free_port(self.host)
        if self.server == "llama-server":
            return self._launch(self._llama_server_cmd(path))
        try:
            import llama_cpp.server  # noqa: F401  (only to fail early with a clear message)
        except ImportError as e:
            raise ConfigError("the embedded upstream needs llama-cpp-python's server: "
                              "pip install 'vas_proxy[local]'") from e
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(path),
               "--model_alias", self.model, "--host", self.host, "--port", str(self.port),
               "--n_ctx", str(self.n_ctx)]
        if self.n_threads:
            cmd += ["--n_threads", str(self.n_threads)]
        if self.lora:
            cmd += ["--lora_path", str(self.lora)]
        if self.deterministic:
            # llama.cpp's batched prompt evaluation (quantised activations, other kernels) gives
            # logits that differ by up to ~0.1 nat from one-token evaluation, so the reported
            # logprobs depend on the server's prefix-cache state: on what was asked before and how
            # requests interleave (measured). Evaluating one token per batch makes them a pure
            # function of the text: same seed → same text, exact cache hits, and multi-token calls
            # that report the very distributions one-token calls would. Costs a slower first
            # prompt evaluation (~2× on a 300-token prompt); later steps reuse the prefix.
            cmd += ["--n_batch", "1", "--n_ubatch", "1"]
        # llama-cpp-python keeps one KV state: interleaved requests (n > 1, concurrent clients)
        # would re-evaluate each other's prompts on every call. Its RAM state cache restores
        # the right state instead: 4 concurrent streams went from 1.4 to 4.3 tokens/s (measured).
        cmd += ["--cache", "true", "--cache_size", str(self.state_cache_bytes)]
        return self._launch(cmd + self.extra_args)

    def _launch(self, cmd: list[str]) -> "LocalUpstream":
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, preexec_fn=_child_setup)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise UpstreamUnreachable(
                    f"the local {self.server} server exited with code {self._proc.returncode}: "
                    f"{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/models", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.2)
        raise UpstreamUnreachable(
            f"the local {self.server} server did not answer within {self.startup_timeout:.0f} s")

    def log_tail(self, n: int = 800) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-n:].strip().replace("\n", " | ")

    def stop(self) -> None:
        """Terminate the server's whole process group; kill it if it lingers."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "LocalUpstream":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
