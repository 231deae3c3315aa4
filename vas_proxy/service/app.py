"""The OpenAI-compatible HTTP face of the engine (FastAPI). `vas_proxy.wrap` runs this same app
in-process through an HTTP transport, so the service and the wrapper are one implementation.

Assembled from its parts, each usable alone: `schemas` (request bodies, `vas` options checked
by the engine's rules), `serving` (the logic, on `app.state.serving`), `formats` (the OpenAI
JSON and SSE shapes), `errors` (the OpenAI error envelope) and `routes` (the thin endpoints).
"""

from __future__ import annotations

from fastapi import FastAPI

from .._version import __version__
from ..runtime import Runtime
from . import errors
from .routes import router
from .serving import Serving


def create_app(runtime: Runtime, *, api_key: str | None = None,
               passthrough_models: bool = False) -> FastAPI:
    """The app over one Runtime. `passthrough_models`: forward any `model` upstream (wrap);
    otherwise only the served model is accepted (404 for others, as OpenAI does)."""
    app = FastAPI(title="vas-proxy", version=__version__, docs_url=None, redoc_url=None)
    app.state.serving = Serving(runtime, api_key=api_key, passthrough_models=passthrough_models)
    errors.install(app)
    app.include_router(router)
    return app


__all__ = ["create_app"]
