"""The HTTP endpoints, kept thin: find the app's `Serving` on `app.state`, check the key, hand
it the body FastAPI parsed with `schemas`. What they answer is decided there, and their errors
are shaped by `errors`."""

from __future__ import annotations

from fastapi import APIRouter, Request

from .schemas import ChatCompletionRequest, CompletionRequest
from .serving import Serving

router = APIRouter()


def serving(request: Request) -> Serving:
    return request.app.state.serving


def authorized(request: Request) -> Serving:
    """The serving, once the request has shown the key. Called in the endpoint, so a body that
    fails validation is answered 400 before the key is looked at (as it always was)."""
    s = serving(request)
    s.check_auth(request)
    return s


@router.get("/health")  # no key: a liveness probe
async def health(request: Request):
    return serving(request).health()


@router.get("/v1/models")
async def models(request: Request):
    return authorized(request).models()


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    return await authorized(request).completion(body, request)


@router.post("/v1/chat/completions")
async def chat(body: ChatCompletionRequest, request: Request):
    return await authorized(request).chat(body, request)
