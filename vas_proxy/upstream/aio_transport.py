"""httpx's connection pool on plain asyncio sockets, for the one-token-per-call loop.

The guided loop makes one upstream call per token (or per speculative step), so the HTTP
client's own CPU time is a per-token cost. httpx's default async network layer goes through
anyio (a cancel scope per read, a lock per write); on a fast upstream that was ~0.7 ms of CPU
per call, about a third of the client's whole cost (benchmarks/reliability.py measures the
proxy's overhead against a direct loop). This backend implements httpcore's
`AsyncNetworkBackend` on asyncio streams with `asyncio.timeout`, mapping failures to httpcore's
own exception types so httpx (and our retry policy) see exactly what they see with anyio.

Used for plain-HTTP upstreams (self-hosted servers, where the call is fast and the saving
matters) on Python 3.11+; TLS upstreams keep httpx's default backend.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import httpcore2 as httpcore
import httpx2 as httpx
from httpcore2._backends.base import AsyncNetworkBackend, AsyncNetworkStream

from ..env import http_proxy_set

AVAILABLE = sys.version_info >= (3, 11)  # asyncio.timeout


class AsyncioStream(AsyncNetworkStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader, self._writer = reader, writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as e:
            raise httpcore.ReadTimeout(str(e) or "read timed out") from e
        except OSError as e:
            raise httpcore.ReadError(str(e)) from e

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._writer.is_closing():
            raise httpcore.WriteError("the connection is closed")
        try:
            self._writer.write(buffer)
            async with asyncio.timeout(timeout):
                await self._writer.drain()  # returns at once unless the send buffer is full
        except TimeoutError as e:
            raise httpcore.WriteTimeout(str(e) or "write timed out") from e
        except OSError as e:
            raise httpcore.WriteError(str(e)) from e

    async def aclose(self) -> None:
        self._writer.close()

    async def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        raise httpcore.ConnectError("TLS is not handled by the asyncio backend (plain HTTP only)")

    def get_extra_info(self, info: str):
        if info == "is_readable":  # httpcore: has the server closed this idle connection?
            return (self._reader.at_eof() or bool(self._reader._buffer)  # noqa: SLF001
                    or self._writer.is_closing())
        if info == "socket":
            return self._writer.get_extra_info("socket")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        return None


class AsyncioBackend(AsyncNetworkBackend):
    async def connect_tcp(self, host, port, timeout=None, local_address=None,
                          socket_options=None) -> AsyncioStream:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, local_addr=(local_address, 0) if local_address else None,
                    limit=2 ** 20)
        except TimeoutError as e:
            raise httpcore.ConnectTimeout(str(e) or "connect timed out") from e
        except OSError as e:
            raise httpcore.ConnectError(str(e)) from e
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for option in socket_options or ():
            sock.setsockopt(*option)
        return AsyncioStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def fast_transport(base_url: str) -> httpx.AsyncHTTPTransport | None:
    """httpx's own transport with its pool on `AsyncioBackend`, for a plain-HTTP `base_url`;
    None (httpx's default) for TLS, older Pythons, an httpx whose pool we do not know, or an
    environment that names a proxy (httpx honours those only without an explicit transport)."""
    if not AVAILABLE or not base_url.startswith("http://") or http_proxy_set():
        return None
    transport = httpx.AsyncHTTPTransport()
    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, httpcore.AsyncConnectionPool) or not hasattr(pool,
                                                                         "_network_backend"):
        return None
    pool._network_backend = AsyncioBackend()  # before any connection: each one takes it
    return transport
