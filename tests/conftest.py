"""Shared fixtures: the real upstreams on SmolLM2 (llama-cpp-python's server, and llama.cpp's
C++ `llama-server` with two slots), each started once."""

from __future__ import annotations

import pytest
from vas_cache import cache_root_env, shared_root

from vas_proxy import env
from vas_proxy.assets import smollm2_gguf
from vas_proxy.templates import from_gguf
from vas_proxy.upstream.local import LocalUpstream
from vas_proxy.values import gguf_cache


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Session- and module-scoped fixtures run before `_isolated_cache`: point them at a cache
    root of this run too, never the user's ~/.cache."""
    with cache_root_env(shared_root(tmp_path_factory)) as root:
        yield root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, _session_cache):
    """A fresh response cache per test (subprocess CLI tests inherit the variable). The
    dequantized backbones are shared with the session's root: one dequantization per run."""
    root = tmp_path_factory.mktemp("vas-cache")  # beside tmp_path: tests own theirs whole
    shared = _session_cache / gguf_cache.SUBDIR
    shared.mkdir(parents=True, exist_ok=True)
    (root / gguf_cache.SUBDIR).symlink_to(shared, target_is_directory=True)
    monkeypatch.setenv(env.CACHE_DIR, str(root))


@pytest.fixture(scope="session")
def upstream():
    with LocalUpstream() as up:
        yield up


@pytest.fixture(scope="session")
def llama_server():
    with LocalUpstream(server="llama-server", slots=2) as up:
        yield up


@pytest.fixture(scope="session")
def chat_template():
    return from_gguf(str(smollm2_gguf()))


@pytest.fixture(scope="session")
def chat_prompt(chat_template):
    def render(text: str) -> str:
        return chat_template.render([{"role": "user", "content": text}])
    return render
