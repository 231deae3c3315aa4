"""The aiohttp path to a plain-HTTP upstream (vas_proxy/upstream/aio_http.py) on real sockets:
the same answers and the same typed errors as the httpx path, every socket failure mapped to
the error our retry policy expects (a timeout, an unreachable upstream), including a server
that closes an idle keep-alive connection between two calls."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import httpx2 as httpx
import pytest

from vas_proxy.errors import UpstreamHTTPError, UpstreamTimeout, UpstreamUnreachable
from vas_proxy.upstream.aio_http import FastHTTP, fast_http
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.upstream.retry import RetryPolicy

from service_helpers import fake_position_body

ONE_TRY = RetryPolicy(max_attempts=1)


def _response(body: dict, close: bool = False) -> bytes:
    data = json.dumps(body).encode()
    head = (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            f"content-length: {len(data)}\r\n{'connection: close' if close else ''}\r\n\r\n")
    return head.replace("\r\n\r\n\r\n", "\r\n\r\n").encode() + data


async def _read_request(reader: asyncio.StreamReader) -> bool:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length")), 0)
    await reader.readexactly(length)
    return True


async def _server(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"


def _client(url: str, **kw) -> UpstreamClient:
    kw.setdefault("retry", ONE_TRY)
    return UpstreamClient(url, "m", use_cache=False, **kw)


async def _one_call_fails(handler, error: type, *, timeout: float, refused: bool = False):
    """One call to a server running `handler` (closed before the call if `refused`) raises
    `error` within 5 s."""
    server, url = await _server(handler)
    if refused:
        server.close()
        await server.wait_closed()
    client = _client(url, timeout=timeout)
    try:
        with pytest.raises(error):
            await asyncio.wait_for(client.complete("p", max_tokens=1, top_k=5), 5)
    finally:
        await client.aclose()
        server.close()


def test_aiohttp_only_for_plain_http_without_a_proxy_or_a_given_transport(monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(fast_http("http://127.0.0.1:1/v1", {}, 5, "u", None), FastHTTP)
    assert isinstance(_client("http://127.0.0.1:1/v1")._fast, FastHTTP)
    assert fast_http("https://api.example.com/v1", {}, 5, "u", None) is None
    assert fast_http("http://127.0.0.1:1/v1", {}, 5, "u", httpx.AsyncHTTPTransport()) is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert fast_http("http://127.0.0.1:1/v1", {}, 5, "u", None) is None


def test_same_answer_as_httpx_default_and_big_bodies():
    big = fake_position_body(k=20)
    big["choices"][0]["text"] = "x" * 2_000_000  # several reads, a full receive buffer

    async def handler(reader, writer):
        while await _read_request(reader):
            writer.write(_response(big))
            await writer.drain()

    async def main():
        server, url = await _server(handler)
        fast = _client(url)
        default = _client(url, transport=httpx.AsyncHTTPTransport())
        assert fast._fast is not None and default._fast is None
        try:
            a = await fast.complete("p", max_tokens=1, top_k=20)
            b = await default.complete("p", max_tokens=1, top_k=20)
            again = await fast.complete("p", max_tokens=1, top_k=20)  # the kept-alive socket
        finally:
            await fast.aclose()
            await default.aclose()
            server.close()
        assert a.text == b.text == again.text and len(a.text) == 2_000_000
        assert a.positions == b.positions

    asyncio.run(main())


def test_an_error_answer_is_the_same_typed_error_on_both_paths():
    """A 429 with Retry-After and an OpenAI error body: status, message and Retry-After reach
    our error the same through aiohttp and httpx, and the request carried the key."""
    seen = []

    async def handler(reader, writer):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head)
            data = json.dumps({"error": {"message": "slow down", "code": "rate"}}).encode()
            writer.write(b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
                         b"retry-after: 7\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data))
            await writer.drain()

    async def main():
        server, url = await _server(handler)
        clients = [_client(url, api_key="sk-test-1"),
                   _client(url, api_key="sk-test-1", transport=httpx.AsyncHTTPTransport())]
        errors = []
        try:
            for c in clients:
                with pytest.raises(UpstreamHTTPError) as e:
                    await c.complete("p", max_tokens=1, top_k=5)
                errors.append(e.value)
        finally:
            for c in clients:
                await c.aclose()
            server.close()
        assert [(e.status, e.retry_after, "slow down" in str(e)) for e in errors] == [
            (429, 7.0, True)] * 2
        assert all(b"authorization: bearer sk-test-1" in h.lower() for h in seen)

    asyncio.run(main())


def test_a_hung_upstream_is_a_timeout():
    async def handler(reader, writer):
        await _read_request(reader)
        await asyncio.sleep(30)

    asyncio.run(_one_call_fails(handler, UpstreamTimeout, timeout=0.3))


@pytest.mark.parametrize("fault", ["refused", "closed", "reset", "cut"])
def test_socket_failures_are_an_unreachable_upstream(fault):
    async def handler(reader, writer):
        await _read_request(reader)
        if fault == "reset":  # SO_LINGER 0: close sends RST, the client's read fails
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        elif fault == "cut":
            writer.write(_response(fake_position_body(k=5))[:-10])
            await writer.drain()
            writer.close()
        else:
            writer.close()

    asyncio.run(_one_call_fails(handler, UpstreamUnreachable, timeout=2,
                                refused=fault == "refused"))


def test_a_keep_alive_connection_the_server_closed_is_not_reused():
    """The server answers, keeps the socket a moment, then closes it while idle: the next call
    must open a new connection instead of failing on the dead one."""
    connections = []

    async def handler(reader, writer):
        connections.append(writer)
        await _read_request(reader)
        writer.write(_response(fake_position_body(k=5)))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()  # idle close, as a server's keep-alive timeout does

    async def main():
        server, url = await _server(handler)
        client = _client(url)  # one attempt: a dead socket reused would be an error
        try:
            for _ in range(3):
                await client.complete("p", max_tokens=1, top_k=5)
                await asyncio.sleep(0.2)
        finally:
            await client.aclose()
            server.close()

    asyncio.run(main())
    assert len(connections) == 3


def test_an_unreachable_upstream_with_credentials_keeps_them_out_of_the_error():
    from vas_proxy.upstream.local import free_port

    url = f"http://alice:s3cr3t-pass@127.0.0.1:{free_port()}/v1"
    client = _client(url)
    assert client._fast is not None

    async def main():
        try:
            with pytest.raises(UpstreamUnreachable) as e:
                await client.complete("p", max_tokens=1, top_k=5)
        finally:
            await client.aclose()
        return str(e.value)

    message = asyncio.run(main())
    assert "s3cr3t" not in message and "127.0.0.1" in message


def test_a_gzip_error_answer_is_read_once_decompressed():
    """aiohttp decompresses the body; the error reader must not decompress it again."""
    import gzip

    async def handler(reader, writer):
        await _read_request(reader)
        data = gzip.compress(json.dumps({"error": {"message": "bad prompt"}}).encode())
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                     b"content-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(data), data))
        await writer.drain()

    async def main():
        server, url = await _server(handler)
        client = _client(url)
        try:
            with pytest.raises(UpstreamHTTPError) as e:
                await client.complete("p", max_tokens=1, top_k=5)
        finally:
            await client.aclose()
            server.close()
        return e.value

    err = asyncio.run(main())
    assert err.status == 400 and "bad prompt" in str(err)
