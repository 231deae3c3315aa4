"""The response cache in Redis (`--cache redis://HOST:PORT/DB`), so that replicas of the service
behind any load balancer share one cache. Same contract as the disk cache (`cache.py`): the same
keys, JSON text values only (never pickle), entries expire after the TTL, a value that is not a
JSON object is a miss and is deleted, and a Redis that is down or slow is logged once and
skipped: the cache never fails a request.
"""

from __future__ import annotations

import json
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..redact import redact_url

log = logging.getLogger("vas_proxy.upstream")
PREFIX = "vas-proxy:v1:"  # namespaced: the Redis may be shared with other applications


class RedisCache:
    """`url`: redis://, rediss:// or unix:// (redis-py's `from_url`). `ttl`: seconds an entry
    lives (None: until Redis evicts it). `timeout`: seconds per Redis command."""

    def __init__(self, url: str, *, ttl: float | None = None, timeout: float = 2.0):
        self.url, self.shown = url, redact_url(url)
        self.ttl = None if ttl is None else max(1, int(ttl))
        self._redis = aioredis.from_url(url, socket_timeout=timeout,
                                        socket_connect_timeout=timeout)
        self._warned = False

    def _warn(self, what: str, e: Exception) -> None:
        level, self._warned = (logging.DEBUG if self._warned else logging.WARNING), True
        log.log(level, "upstream cache %s: %s failed (%s); going on without it", self.shown,
                what, type(e).__name__)

    async def aget(self, key: str) -> dict | None:
        try:
            text = await self._redis.get(PREFIX + key)
        except (RedisError, OSError) as e:
            self._warn("read", e)
            return None
        if text is None:
            return None
        try:
            data = json.loads(text.decode("utf-8"))  # bytes: a planted value may not be text
        except ValueError:  # UnicodeDecodeError included
            data = None
        if isinstance(data, dict):
            return data
        log.warning("upstream cache %s: dropping a corrupt entry", self.shown)
        await self.adelete(key)
        return None

    async def aset(self, key: str, data: dict) -> None:
        try:
            await self._redis.set(PREFIX + key, json.dumps(data, separators=(",", ":")),
                                  ex=self.ttl)
        except (RedisError, OSError) as e:
            self._warn("write", e)

    async def adelete(self, key: str) -> None:
        try:
            await self._redis.delete(PREFIX + key)
        except (RedisError, OSError) as e:
            self._warn("delete", e)

    async def ping(self) -> bool:
        """Whether Redis answers (readiness)."""
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def aclose(self) -> None:
        await self._redis.aclose()
