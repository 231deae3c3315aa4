"""Shared fixtures: the real upstream (llama-cpp-python's server on SmolLM2), started once."""

from __future__ import annotations

import pytest

from vas_proxy.assets import smollm2_gguf
from vas_proxy.templates import from_gguf
from vas_proxy.upstream.local import LocalUpstream


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's response cache (subprocess CLI tests inherit the variable)."""
    monkeypatch.setenv("VAS_PROXY_CACHE_DIR", str(tmp_path / "vas-cache"))


@pytest.fixture(scope="session")
def upstream():
    with LocalUpstream() as up:
        yield up


@pytest.fixture(scope="session")
def chat_template():
    return from_gguf(str(smollm2_gguf()))


@pytest.fixture(scope="session")
def chat_prompt(chat_template):
    def render(text: str) -> str:
        return chat_template.render([{"role": "user", "content": text}])
    return render
