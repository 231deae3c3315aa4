"""The HTTP endpoints, kept thin: find the app's `Serving` on `app.state` and hand it the body
FastAPI parsed with `schemas`. What they answer is decided there; the key was checked before
the body was read (`guard.KeyCheck`), and errors are shaped by `errors`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from .errors import error_body
from .schemas import ChatCompletionRequest, CompletionRequest
from .serving import Serving

router = APIRouter()


def serving(request: Request) -> Serving:
    return request.app.state.serving


@router.get("/health")  # no key: a liveness probe
async def health(request: Request):
    return serving(request).health()


@router.get("/ready")  # no key: a readiness probe (the upstream answers)
async def ready(request: Request):
    ok, checks = await serving(request).ready()
    if ok:
        return {"status": "ready", "checks": checks}
    failed = ", ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
    return JSONResponse(status_code=503, content={**error_body(
        f"not ready ({failed})", "server_error", code="not_ready"), "checks": checks})


@router.get("/metrics")  # behind the key when there is one (guard.KeyCheck)
async def metrics(request: Request):
    data, content_type = serving(request).metrics.render()
    return Response(data, media_type=content_type)


@router.get("/v1/models")
async def models(request: Request):
    return serving(request).models()


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    return await serving(request).completion(body, request)


@router.post("/v1/chat/completions")
async def chat(body: ChatCompletionRequest, request: Request):
    return await serving(request).chat(body, request)
