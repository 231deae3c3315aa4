"""HTTP transports that answer by calling an ASGI app in-process (no socket), streaming the body
chunk by chunk. They let an `openai` client talk to the vas-proxy app directly: typed responses,
`with_raw_response`, streaming and `with_options` copies all keep working (docs/design.md §2).

httpx's own ASGITransport buffers the whole body, which would turn streaming into one late burst;
these stream. Closing a response early tells the app the client disconnected. Closing the
transport (the openai client's `close()` / `with` exit) runs `on_close` (the engine's upstream
client) and, for the sync one, stops its event-loop thread: nothing outlives the client.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import httpx2 as httpx


class _AppStream(httpx.AsyncByteStream):
    def __init__(self, queue: asyncio.Queue, task: asyncio.Task, disconnected: asyncio.Event):
        self._queue, self._task, self._disconnected = queue, task, disconnected

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            msg = await self._queue.get()
            if msg is None:
                if self._task.done() and not self._task.cancelled() and self._task.exception():
                    raise httpx.RemoteProtocolError("the app failed mid-response")
                return
            if msg["type"] == "http.response.body":
                if msg.get("body"):
                    yield msg["body"]
                if not msg.get("more_body", False):
                    return

    async def aclose(self) -> None:
        self._disconnected.set()
        if not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=5.0)
            except (asyncio.TimeoutError, Exception):
                self._task.cancel()


class AsyncAppTransport(httpx.AsyncBaseTransport):
    """Serve requests from `app` in the caller's event loop. `prefix` is the client's base path
    (e.g. "/v1" or "/api/v1"): it is mapped onto the app's "/v1" routes."""

    def __init__(self, app, prefix: str = "/v1",
                 on_close: Callable[[], Awaitable[None]] | None = None):
        self.app = app
        self.prefix = prefix.rstrip("/")
        self._on_close = on_close

    async def aclose(self) -> None:
        on_close, self._on_close = self._on_close, None  # once, however often it is closed
        if on_close is not None:
            await on_close()

    def _path(self, path: str) -> str:
        if self.prefix and path.startswith(self.prefix):
            path = path[len(self.prefix):]
        return "/v1" + path if not path.startswith("/v1/") else path

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        path = self._path(request.url.path)
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": request.method, "scheme": request.url.scheme,
                 "path": path, "raw_path": path.encode(), "root_path": "",
                 "query_string": request.url.query,
                 "headers": [(k.lower(), v) for k, v in request.headers.raw],
                 "server": ("vas-proxy.inprocess", 80), "client": ("127.0.0.1", 0)}
        queue: asyncio.Queue = asyncio.Queue()
        disconnected = asyncio.Event()
        sent = False

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(msg):
            await queue.put(msg)

        task = asyncio.create_task(self.app(scope, receive, send))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        start = await queue.get()
        if start is None or start["type"] != "http.response.start":
            if task.done() and not task.cancelled() and task.exception():
                raise httpx.RemoteProtocolError(f"the app failed: {task.exception()!r}")
            raise httpx.RemoteProtocolError("the app sent no response")
        return httpx.Response(start["status"], headers=start.get("headers", []),
                              stream=_AppStream(queue, task, disconnected), request=request)


class _SyncStream(httpx.SyncByteStream):
    def __init__(self, loop: asyncio.AbstractEventLoop, stream: _AppStream):
        self._loop, self._stream = loop, stream
        self._it = stream.__aiter__()

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                yield self._run(self._it.__anext__())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        if not self._loop.is_running():  # the transport was closed first: its tasks are gone
            return
        self._run(self._stream.aclose())


class SyncAppTransport(httpx.BaseTransport):
    """The same for sync clients: the app (and the engine's async upstream client) live in one
    private event loop on a daemon thread; each body chunk is fetched from it as it is read.

    Copies of the client (`with_options`) share this transport, as they share an httpx pool in
    the openai SDK; closing any of them closes it (the SDK's own semantics).
    """

    CLOSE_TIMEOUT = 10.0  # seconds for `on_close` and in-flight work to finish

    def __init__(self, app, prefix: str = "/v1",
                 on_close: Callable[[], Awaitable[None]] | None = None):
        self._async = AsyncAppTransport(app, prefix)
        self._on_close = on_close
        self._lock = threading.Lock()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vas-proxy-engine",
                                        daemon=True)
        self._thread.start()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        areq = httpx.Request(request.method, request.url, headers=request.headers, content=body)
        resp = asyncio.run_coroutine_threadsafe(
            self._async.handle_async_request(areq), self._loop).result()
        return httpx.Response(resp.status_code, headers=resp.headers,
                              stream=_SyncStream(self._loop, resp.stream), request=request)

    async def _shutdown(self) -> None:
        """In the loop: cancel what still runs (an unread stream's generation), close the
        upstream (`on_close`), and join the default executor's threads (value scoring)."""
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        try:
            if self._on_close is not None:
                await self._on_close()
        finally:
            await self._loop.shutdown_asyncgens()
            await self._loop.shutdown_default_executor()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(
                    self.CLOSE_TIMEOUT)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(self.CLOSE_TIMEOUT)
                if not self._thread.is_alive():
                    self._loop.close()
