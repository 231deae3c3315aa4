"""Response cache of upstream calls: the upstream's JSON answer, as JSON text, in diskcache.

When a cached answer is exact. A cached answer is a replay of one upstream answer, so it is only
as good as that answer is reproducible. Only requests that carry a `seed` or ask for temperature 0
are cached (`cacheable`):
- logprob queries: llama.cpp reports the raw model distribution whatever its sampler does
  (docs/design.md §4), and the engine sends explicit upstream seeds derived from the request seed, so the whole
  answer, the upstream's own sampled token included, comes back the same: replaying it is exact;
- temperature 0: greedy answers do not depend on a random draw;
- anything the upstream sampled without a seed is NOT cached: replaying one draw is not a fresh
  draw, and samples would silently stop being independent.

Key: sha256 of canonical JSON (sorted keys) of the upstream URL and path and the whole request body
(model, prompt, max_tokens, logprobs, temperature, seed, stop, sampler parameters): everything that
can change the answer, never the API key (it only ever goes into the Authorization header).

Safety (docs/design.md §2): diskcache (SQLite in WAL mode) is thread- and process-safe, and a
writer killed mid-write leaves its transaction rolled back, not a half entry. Its default `Disk` pickles values
and unpickles whatever a row says is a pickle, which runs code planted by anyone who can write the
cache directory (CVE-2025-69872); `JSONTextDisk` stores str only, inside the SQLite file, and
refuses any other row. A row that cannot be read or decoded is a miss and is deleted; a cache that
cannot be opened or written is logged once and skipped: the cache never fails a request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import diskcache
from diskcache.core import MODE_RAW, UNKNOWN

from .. import env

log = logging.getLogger("vas_proxy.upstream")

DEFAULT_SIZE_LIMIT = 1 << 30  # 1 GiB
KEY_VERSION = 1  # bump when the key material or the stored form changes
_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_cache(where: str | os.PathLike | None = None, *, size_limit: int = DEFAULT_SIZE_LIMIT,
               ttl: float | None = None):
    """The response cache at `where`: a directory (diskcache; default `default_cache_dir()`)
    or a Redis URL (`redis_cache.RedisCache`, shared by replicas). Both have the async
    `aget`/`aset`/`adelete`/`aclose` the upstream client uses."""
    if isinstance(where, str) and where.startswith(REDIS_SCHEMES):
        from .redis_cache import RedisCache

        return RedisCache(where, ttl=ttl)
    return ResponseCache(where, size_limit=size_limit, ttl=ttl)


def default_cache_dir() -> Path:
    """The cache root (`env.cache_root`): `$VAS_PROXY_CACHE_DIR`, `$XDG_CACHE_HOME/vas-proxy`
    or `~/.cache/vas-proxy`."""
    return env.cache_root()


def cacheable(body: dict) -> bool:
    """Whether the upstream reproduces this request's answer: an explicit seed, or temperature 0."""
    return body.get("seed") is not None or body.get("temperature") == 0


def cache_key(base_url: str, path: str, body: dict) -> str:
    """sha256 of canonical JSON of what determines the answer; never the API key (not an input)."""
    material = {"v": KEY_VERSION, "url": base_url.rstrip("/") + path, "body": body}
    text = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class CorruptEntry(ValueError):
    """A cache row that `JSONTextDisk` did not write."""


class JSONTextDisk(diskcache.Disk):
    """Keys and values are `str` kept inside the SQLite file; nothing is pickled or put in files.

    Reading refuses any row that is not raw text, so a planted pickle row is never unpickled and a
    planted file name is never opened or deleted (CVE-2025-69872).
    """

    def put(self, key):
        if type(key) is not str:
            raise TypeError("cache keys are str")
        return key, True

    def get(self, key, raw):
        if not raw or type(key) is not str:
            raise CorruptEntry("non-text cache key")
        return key

    def store(self, value, read, key=UNKNOWN):
        if read or type(value) is not str:
            raise TypeError("cache values are JSON text")
        return 0, MODE_RAW, None, value

    def fetch(self, mode, filename, value, read):
        if mode != MODE_RAW or filename is not None or type(value) is not str:
            raise CorruptEntry("non-text cache value")
        return value

    def remove(self, file_path):
        pass  # our rows never name files; never delete one that a planted row names


def _private(directory: Path) -> None:
    """Tighten an existing cache directory to 0700 and its files to 0600 (mkdir's mode only
    applies to a new one). Only a directory that is empty or holds a diskcache: a user who points
    --cache-dir at a shared folder keeps that folder's modes."""
    entries = list(directory.iterdir())
    if entries and not (directory / "cache.db").exists():
        return
    if directory.stat().st_uid != os.getuid():
        return
    os.chmod(directory, 0o700)
    for p in directory.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.chmod(p, 0o600)
        elif p.is_dir() and not p.is_symlink():
            os.chmod(p, 0o700)


class ResponseCache:
    """Upstream JSON answers by key. Opened on first use; sync methods plus async ones that run on
    one worker thread (diskcache is sync; its SQLite connections are per thread)."""

    def __init__(self, directory: str | os.PathLike | None = None, *,
                 size_limit: int = DEFAULT_SIZE_LIMIT,
                 eviction_policy: str = "least-recently-stored", timeout: float = 10.0,
                 ttl: float | None = None):
        self.directory = Path(directory).expanduser() if directory else default_cache_dir()
        self.size_limit = int(size_limit)
        self.ttl = ttl  # seconds an entry lives (None: until evicted)
        self.eviction_policy = eviction_policy
        self.timeout = timeout
        self._cache: diskcache.Cache | None = None
        self._broken = False
        self._warned = False
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def _open(self) -> diskcache.Cache | None:
        with self._lock:
            if self._cache is None and not self._broken:
                try:
                    # 0700: cached prompts and answers may be private.
                    self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                    _private(self.directory)
                    self._cache = diskcache.Cache(
                        str(self.directory), timeout=self.timeout, disk=JSONTextDisk,
                        size_limit=self.size_limit, eviction_policy=self.eviction_policy)
                except _ERRORS as e:
                    self._broken = True
                    self._warn("open", e)
            return self._cache

    def _warn(self, what: str, e: Exception) -> None:
        level, self._warned = (logging.DEBUG if self._warned else logging.WARNING), True
        log.log(level, "upstream cache %s: %s failed (%s); going on without it",
                self.directory, what, e)

    def get(self, key: str) -> dict | None:
        """The stored answer, or None on a miss (a corrupt entry is deleted: also a miss)."""
        cache = self._open()
        if cache is None:
            return None
        try:
            text = cache.get(key)
            if text is None:
                return None
            data = json.loads(text)
            if isinstance(data, dict):
                return data
        except ValueError:  # CorruptEntry, undecodable JSON
            pass
        except _ERRORS as e:
            self._warn("read", e)
            return None
        log.warning("upstream cache %s: dropping a corrupt entry", self.directory)
        self.delete(key)
        return None

    def set(self, key: str, data: dict) -> None:
        cache = self._open()
        if cache is None:
            return
        try:
            cache.set(key, json.dumps(data, separators=(",", ":")), expire=self.ttl)
        except _ERRORS as e:
            self._warn("write", e)

    def delete(self, key: str) -> None:
        cache = self._open()
        if cache is not None:
            try:
                cache.delete(key)
            except _ERRORS as e:
                self._warn("delete", e)

    def _run(self, fn, *args):
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vas-cache")
        return asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def aget(self, key: str) -> dict | None:
        return await self._run(self.get, key)

    async def aset(self, key: str, data: dict) -> None:
        await self._run(self.set, key, data)

    async def adelete(self, key: str) -> None:
        await self._run(self.delete, key)

    def _close_conn(self) -> None:
        if self._cache is not None:
            self._cache.close()  # closes the calling thread's connection

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._run(self._close_conn)
            self._pool.shutdown(wait=False)
            self._pool = None
        self.close()

    def close(self) -> None:
        """Close this thread's connection (reopened on next use)."""
        self._close_conn()
