"""A cache root for module-scoped fixtures, never the user's.

conftest's `_isolated_cache` points $VAS_PROXY_CACHE_DIR at a fresh directory for each test, but
module-scoped fixtures run before it: without this they would write the dequantized backbone
(and tokenizer) cache under ~/.cache. One directory per session, so the modules that load the
bundled backbone share its cache entry (one dequantization per run, not one per module).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from vas_proxy import env


def shared_root(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "vas-cache-shared"


@contextlib.contextmanager
def cache_root_env(root: Path):
    """$VAS_PROXY_CACHE_DIR = root for the duration (restored after)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(env.CACHE_DIR, str(root))
        yield root
