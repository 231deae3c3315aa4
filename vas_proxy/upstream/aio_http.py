"""aiohttp for the one-token-per-call loop's requests to a plain-HTTP upstream.

The guided loop makes one upstream call per token (or per speculative step), so the HTTP
client's own CPU time is a per-token cost. On a fast loopback upstream one call cost ~1.6 ms
of CPU through httpx's async client and ~0.6 ms through aiohttp (its parser is compiled), and
that difference was most of the proxy's overhead over a direct loop (benchmarks/reliability.py
measures it). So whole-answer calls to a self-hosted `http://` upstream go through aiohttp;
streamed calls, TLS upstreams, an environment that names a proxy, and any client given its own
httpx transport (tests, the in-process app) keep httpx. Both paths raise the same typed errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp
import httpx2 as httpx

from ..env import http_proxy_set
from ..errors import UpstreamTimeout, UpstreamUnreachable
from ..redact import redact


class FastHTTP:
    """Keep-alive aiohttp session for one plain-HTTP base URL, opened on first use (it
    belongs to the running event loop). `request` returns the status and body, or raises
    `UpstreamTimeout` / `UpstreamUnreachable` as the httpx path does."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float, shown_url: str):
        self.base_url, self.headers, self.shown_url = base_url, headers, shown_url
        # httpx's timeout is per phase (connect, each read, pool wait); these are the same
        self.timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout,
                                             sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # an idle connection is kept 5 s, as httpx keeps it; environment proxies are not read
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(keepalive_timeout=5),
                                     headers=self.headers, timeout=self.timeout,
                                     trust_env=False)

    async def request(self, method: str, path: str, body: dict | None
                      ) -> tuple[int, Mapping[str, str], bytes]:
        if self._session is None or self._session.closed:
            self._session = self._open()
        url = path if "://" in path else self.base_url + path  # absolute: a root route
        try:
            async with self._session.request(method, url, json=body,
                                             allow_redirects=False) as resp:
                return resp.status, resp.headers, await resp.read()
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as e:
            raise UpstreamTimeout(f"upstream {self.shown_url} timed out "
                                  f"({type(e).__name__})") from None
        except (aiohttp.ClientError, OSError) as e:
            raise UpstreamUnreachable(
                redact(f"cannot reach upstream {self.shown_url}: {type(e).__name__}: {e}")
            ) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def fast_http(base_url: str, headers: dict[str, str], timeout: float, shown_url: str,
              transport: httpx.AsyncBaseTransport | None) -> FastHTTP | None:
    """The aiohttp path for a plain-HTTP `base_url`; None (httpx) for TLS, a given transport,
    or an environment that names a proxy (httpx honours those; this path does not)."""
    if transport is not None or not base_url.startswith("http://") or http_proxy_set():
        return None
    return FastHTTP(base_url, headers, timeout, shown_url)
