"""The environment variables the package reads, all of them, read here and nowhere else.

A leaf module: each function reads its variable when called (not at import), so tests and
long-lived processes see the current environment.
"""

from __future__ import annotations

import os
from pathlib import Path

UPSTREAM_API_KEY = "VAS_UPSTREAM_API_KEY"  # the upstream's key (generate, serve, train, eval)
PROXY_API_KEY = "VAS_PROXY_API_KEY"  # the key `serve` requires of its clients
CACHE_DIR = "VAS_PROXY_CACHE_DIR"  # response cache and dequantized backbones
TORCH_THREADS = "VAS_PROXY_TORCH_THREADS"  # CPU threads of the value models
LLAMA_SERVER = "VAS_LLAMA_SERVER"  # path of llama.cpp's llama-server binary
LLAMA_CONVERT = "VAS_LLAMA_CONVERT"  # path of llama.cpp's convert_lora_to_gguf.py


def _get(name: str) -> str | None:
    return os.environ.get(name) or None


def upstream_api_key(given: str | None = None) -> str | None:
    """`given` (a flag or argument) when set, else $VAS_UPSTREAM_API_KEY."""
    return given or _get(UPSTREAM_API_KEY)


def proxy_api_key(given: str | None = None) -> str | None:
    """`given` when set, else $VAS_PROXY_API_KEY."""
    return given or _get(PROXY_API_KEY)


HTTP_PROXIES = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")  # httpx honours these


def http_proxy_set() -> bool:
    """Whether the environment names a proxy for plain-HTTP requests (httpx honours it only
    without an explicit transport: `upstream/aio_http.py` then steps aside)."""
    return any(_get(name) for name in HTTP_PROXIES)


def llama_server_binary() -> str | None:
    """$VAS_LLAMA_SERVER, else `llama-server` beside this Python (the Makefile builds it into
    the venv: scripts/build-llama-server.sh), else on $PATH; None when none is found."""
    import shutil
    import sys

    given = _get(LLAMA_SERVER)
    if given:
        return given
    beside = Path(sys.executable).parent / "llama-server"
    if beside.exists():
        return str(beside)
    return shutil.which("llama-server")


def llama_lora_converter() -> str | None:
    """$VAS_LLAMA_CONVERT, else the `convert/convert_lora_to_gguf.py` that
    scripts/build-llama-server.sh keeps beside the llama-server binary; None when none is."""
    given = _get(LLAMA_CONVERT)
    if given:
        return given
    binary = llama_server_binary()
    if binary is None:
        return None
    script = Path(binary).resolve().parent / "convert" / "convert_lora_to_gguf.py"
    return str(script) if script.is_file() else None


def torch_threads() -> str | None:
    """$VAS_PROXY_TORCH_THREADS as written (the caller parses and reports it)."""
    return _get(TORCH_THREADS)


def cache_root() -> Path:
    """`$VAS_PROXY_CACHE_DIR`, else `$XDG_CACHE_HOME/vas-proxy`, else `~/.cache/vas-proxy`."""
    env = _get(CACHE_DIR)
    if env:
        return Path(env).expanduser()
    xdg = _get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"  # XDG: absolute only
    return base / "vas-proxy"
