"""Helpers for service tests: run an app under uvicorn on a free port; fake upstreams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import httpx2 as httpx
import uvicorn
from fastapi import FastAPI, Request  # module level: the route's annotations name them

from vas_proxy.upstream.local import free_port


@contextlib.contextmanager
def serve_app(app):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def fake_position_body(tokens=("Hello", " world", "!", " How", " are"), k=5):
    tops = [{t: -0.1 * (j + 1)} | {f"alt{j}_{x}": -2.0 - x for x in range(k - 1)}
            for j, t in enumerate(tokens[:1])]
    return {"choices": [{"text": tokens[0], "index": 0, "finish_reason": "length",
                         "logprobs": {"tokens": [tokens[0]], "token_logprobs": [-0.1],
                                      "top_logprobs": tops}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 1}}


class FakeUpstream:
    """A MockTransport upstream: answers `ok_calls` 1-token logprob calls, then fails with
    `fail_status` (or forever succeeds when fail_status is None). Counts calls; optional delay."""

    def __init__(self, ok_calls: int = 10**9, fail_status: int | None = 500, delay: float = 0.0):
        self.calls = 0
        self.ok_calls, self.fail_status, self.delay = ok_calls, fail_status, delay

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.calls > self.ok_calls and self.fail_status:
            return httpx.Response(self.fail_status, json={"error": {"message": "upstream broke"}})
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m"}]})
        body = json.loads(request.content)
        k = body.get("logprobs") or 5
        return httpx.Response(200, json=fake_position_body(k=k))

    def transport(self):
        return httpx.MockTransport(self.handler)


def fake_upstream_app():
    """A fake OpenAI completions server (FastAPI) answering every call at once with one
    logprob position; `app.state.calls` counts the calls. For tests and benchmarks that need a
    real HTTP upstream (other processes, load) faster than any model."""
    app = FastAPI()
    app.state.calls = 0

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "m", "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        app.state.calls += 1
        body = await request.json()
        return fake_position_body(k=body.get("logprobs") or 5)

    return app


if __name__ == "__main__":  # `python tests/service_helpers.py PORT`: the fake, as a process
    import sys

    uvicorn.run(fake_upstream_app(), host="127.0.0.1", port=int(sys.argv[1]),
                log_level="warning", access_log=False)
