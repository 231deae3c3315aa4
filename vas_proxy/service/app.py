"""The OpenAI-compatible HTTP face of the engine (FastAPI). `vas_proxy.wrap` runs this same app
in-process through an HTTP transport, so the service and the wrapper are one implementation.

Assembled from its parts, each usable alone: `schemas` (request bodies, `vas` options checked
by the engine's rules; `unsupported` fields refused), `serving` (the logic, on
`app.state.serving`), `limits` (the operator's), `formats` (the OpenAI JSON and SSE shapes),
`errors` (the OpenAI error envelope), `guard` (the layers outside FastAPI: key, body size, last
resort) and `routes` (the thin endpoints).
"""

from __future__ import annotations

from fastapi import FastAPI

from .._version import __version__
from ..options import LimitOptions
from ..runtime import Runtime
from . import errors
from .guard import BodyLimit, CatchAll, KeyCheck
from .limits import Limits
from .metrics import Measure
from .routes import router
from .serving import Serving


def create_app(runtime: Runtime, *, api_key: str | None = None,
               passthrough_models: bool = False, limits: LimitOptions | None = None) -> FastAPI:
    """The app over one Runtime. `passthrough_models`: forward any `model` upstream (wrap);
    otherwise only the served model is accepted (404 for others, as OpenAI does). `limits`:
    the operator's (None: unlimited, for `wrap`). `api_key`: required on /v1, /openapi.json."""
    app = FastAPI(title="vas-proxy", version=__version__, docs_url=None, redoc_url=None)
    app.state.serving = Serving(runtime, passthrough_models=passthrough_models,
                                limits=Limits(limits))
    errors.install(app)
    app.include_router(router)
    # Added inside out: Measure sees every answer, CatchAll every failure, then the key, then
    # the body's size.
    app.add_middleware(BodyLimit, max_bytes=limits.body_bytes if limits else None)
    app.add_middleware(KeyCheck, key=api_key)
    app.add_middleware(CatchAll)
    app.add_middleware(Measure, metrics=app.state.serving.metrics)  # counts every answer
    _document_errors(app)
    return app


def _document_errors(app: FastAPI) -> None:
    """The schema says what the app sends: validation failures are 400s in the OpenAI envelope
    (FastAPI would document them as 422 with its own shape)."""
    make = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = make()
            envelope = {"description": "OpenAI-shaped error", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}}
            for ops in schema.get("paths", {}).values():
                for op in ops.values():
                    responses = op.get("responses", {})
                    if responses.pop("422", None) is not None:
                        for status in ("400", "401", "413", "429", "502", "504"):
                            responses.setdefault(status, envelope)
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                comps.pop(name, None)
            comps["ErrorEnvelope"] = {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "object", "required": ["message", "type"], "properties": {
                    "message": {"type": "string"}, "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]}}}}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


__all__ = ["create_app"]
