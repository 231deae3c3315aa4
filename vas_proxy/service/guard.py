"""The app's outer layers, plain ASGI so they act before FastAPI reads or validates anything:

- `CatchAll` answers an unexpected exception with the 500 envelope itself. Starlette's own
  last-resort handler re-raises after answering, and uvicorn then drops the keep-alive
  connection, so the client's next, valid request on it failed with a reset.
- `KeyCheck` asks for the key on `/v1/*` and `/openapi.json` before the body is read: a caller
  without the key learns nothing, not even which fields are wrong.
- `BodyLimit` answers 413 for a body over the operator's limit, from Content-Length when sent,
  else while it is read.
"""

from __future__ import annotations

import hmac
import logging

from .errors import BodyTooLarge, error_response, unauthorized_response

log = logging.getLogger("vas_proxy.service")
PROTECTED = ("/v1/", "/openapi.json", "/metrics")


class CatchAll:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as e:
            if started:  # mid-body: nothing can be said any more (streams end with an event)
                raise
            log.error("internal error on %s", scope.get("path"), exc_info=e)
            await error_response(500, f"internal error: {type(e).__name__}",
                                 "server_error")(scope, receive, send)


def key_ok(headers: list[tuple[bytes, bytes]], key: str) -> bool:
    """Whether the ASGI `headers` carry `Authorization: Bearer <key>` (in constant time)."""
    got = next((v for k, v in headers if k.lower() == b"authorization"), b"")
    scheme, _, token = got.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key.encode())


class KeyCheck:
    def __init__(self, app, key: str | None):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        if (self.key is not None and scope["type"] == "http"
                and scope["path"].startswith(PROTECTED)
                and not key_ok(scope.get("headers", []), self.key)):
            return await unauthorized_response()(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    def __init__(self, app, max_bytes: int | None):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if self.max_bytes is None or scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = BodyTooLarge(self.max_bytes)
        length = next((v for k, v in scope.get("headers", []) if k.lower() == b"content-length"),
                      None)
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await error_response(413, too_large.detail,
                                        code="request_too_large")(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large  # inside the route's body read: answered by its handler
            return message

        return await self.app(scope, counted, send)
