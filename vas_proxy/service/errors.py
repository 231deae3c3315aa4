"""The OpenAI error envelope {"error": {"message", "type", "param", "code"}} and the app's
exception handlers: every failure the service answers, inside or outside a stream, has this
shape (docs/design.md §5), so the openai SDK raises its own typed errors for them.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import VasError
from ..redact import redact

log = logging.getLogger("vas_proxy.service")

# The pydantic error type of a `vas` option that broke one of the engine's rules. It carries
# the rule's VasError (ctx "error"), answered as it would have been raised outside pydantic.
VAS_OPTION = "vas_option"


class UnknownModel(Exception):
    """A request for a model this server does not serve."""

    def __init__(self, model: str, served: list[str]):
        super().__init__(model)
        self.model, self.served = model, served


class BodyTooLarge(StarletteHTTPException):
    """A request body over the operator's limit (raised while the body is read)."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than this server's limit of {limit} "
                              "bytes (--limit-body-bytes)")


class Overloaded(VasError):
    """No room for the request's generations now (--limit-generations): try again soon."""

    http_status, code, type = 429, "server_overloaded", "rate_limit_error"
    retry_after = 1.0


class DeadlineExceeded(VasError):
    """The request ran past the operator's deadline (--limit-deadline) and was cancelled."""

    http_status, code, type = 504, "deadline_exceeded", "server_error"


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status)


def vas_error_body(e: VasError) -> dict:
    return error_body(redact(e.message), e.type, e.param, e.code)


def vas_error_response(e: VasError) -> JSONResponse:
    """The envelope of `e`, with Retry-After when it says how long to wait (429s: ours, or
    the upstream's passed on)."""
    headers = None
    if e.http_status == 429:
        after = getattr(e, "retry_after", None) or 1.0
        headers = {"retry-after": str(max(1, math.ceil(after)))}
    return JSONResponse(vas_error_body(e), status_code=e.http_status, headers=headers)


def stream_error_body(e: Exception) -> dict:
    """The `data: {"error": ...}` event that ends a stream whose generation failed."""
    if isinstance(e, VasError):
        return vas_error_body(e)
    log.error("generation failed", exc_info=e)
    return error_body(f"internal error: {type(e).__name__}", "server_error")


def vas_option_error(e: VasError) -> PydanticCustomError:
    """A rule's VasError as a pydantic validation error (raised inside a request schema)."""
    return PydanticCustomError(VAS_OPTION, "{message}", {"error": e, "message": e.message})


def _validator_step(x) -> bool:
    return isinstance(x, str) and ("[" in x or "-" in x or x in {"str", "int", "float", "bool",
                                                                    "list", "dict", "none"})


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errs = exc.errors()
    # A body's own fields are reported before its `vas` options: the engine used to check
    # those only once the body was valid, and the first failure is the one answered.
    first = next((e for e in errs if e.get("type") != VAS_OPTION), errs[0] if errs else {})
    if first.get("type") == VAS_OPTION:
        return vas_error_response(first["ctx"]["error"])
    if first.get("type") == "json_invalid":
        return error_response(400, "could not parse the request body as JSON", code="invalid_json")
    # pydantic's loc also names the union member or validator tried ("str", "function-after[...]")
    loc = [str(x) for x in first.get("loc", []) if x != "body" and not _validator_step(x)]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid request").removeprefix("Value error, ")
    if first.get("type") == "missing":
        msg = f"missing required field: {param}"
    elif param:
        msg = f"invalid value for {param}: {msg}"
    return error_response(400, msg, param=param, code="invalid_value")


async def vas_error(request: Request, exc: VasError) -> JSONResponse:
    return vas_error_response(exc)


def unauthorized_response() -> JSONResponse:
    return error_response(401, "invalid or missing API key: send Authorization: Bearer <key>",
                          code="invalid_api_key")



async def unknown_model(request: Request, exc: UnknownModel) -> JSONResponse:
    return error_response(404, f"the model {exc.model!r} does not exist here; served: "
                               f"{', '.join(exc.served)}", param="model", code="model_not_found")


_HTTP_CODES = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), code=_HTTP_CODES.get(exc.status_code))


def install(app: FastAPI) -> None:
    """Answer every failure of `app` with the envelope (the unexpected ones: `guard.CatchAll`)."""
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(VasError, vas_error)
    app.add_exception_handler(UnknownModel, unknown_model)
    app.add_exception_handler(StarletteHTTPException, http_error)
