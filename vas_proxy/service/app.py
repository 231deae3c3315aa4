"""The OpenAI-compatible HTTP face of the engine (FastAPI). `vas_proxy.wrap` runs this same app
in-process through an HTTP transport, so the service and the wrapper are one implementation.

Errors always use the OpenAI envelope {"error": {"message", "type", "param", "code"}}; inside a
stream they are sent as a `data: {"error": ...}` event (which the openai SDK raises), never as a
silent truncation. A client that disconnects cancels its generation tasks: no further upstream
calls are made for it.

`vas: {"best_of": N, "reward": NAME}` answers with the Best-of-N baseline instead (`bestofn`):
NAME is one of the rewards the operator loaded at start, never a spec from the request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..bestofn import BestOfN, best_of_n, check_best_of
from ..engine import Generation, GenerationRequest, Outcome, TokenEvent
from ..usage import Usage
from ..errors import ConfigError, VasError
from ..runtime import Runtime
from .schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("vas_proxy.service")
DEFAULT_CHAT_MAX_TOKENS = 256


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status)


def vas_error_body(e: VasError) -> dict:
    return error_body(e.message, e.type, e.param, e.code)


class _Unauthorized(Exception):
    pass


class _UnknownModel(Exception):
    def __init__(self, model: str, served: list[str]):
        self.model, self.served = model, served


def create_app(runtime: Runtime, *, api_key: str | None = None,
               passthrough_models: bool = False) -> FastAPI:
    """The app over one Runtime. `passthrough_models`: forward any `model` upstream (wrap);
    otherwise only the served model is accepted (404 for others, as OpenAI does)."""
    app = FastAPI(title="vas-proxy", version=__version__, docs_url=None, redoc_url=None)
    engine = runtime.engine
    rewards = dict(runtime.rewards or {})

    # ---- errors -------------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":
            return error_response(400, "could not parse the request body as JSON",
                                  code="invalid_json")
        loc = [str(x) for x in first.get("loc", []) if x != "body"]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        if first.get("type") == "missing":
            msg = f"missing required field: {param}"
        elif param:
            msg = f"invalid value for {param}: {msg}"
        return error_response(400, msg, param=param, code="invalid_value")

    @app.exception_handler(VasError)
    async def _vas(request: Request, exc: VasError):
        return JSONResponse(vas_error_body(exc), status_code=exc.http_status)

    @app.exception_handler(_Unauthorized)
    async def _unauth(request: Request, exc: _Unauthorized):
        return error_response(401, "invalid or missing API key: send Authorization: Bearer <key>",
                              code="invalid_api_key")

    @app.exception_handler(_UnknownModel)
    async def _model(request: Request, exc: _UnknownModel):
        return error_response(404, f"the model {exc.model!r} does not exist here; served: "
                                   f"{', '.join(exc.served)}", param="model",
                              code="model_not_found")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail),
                              code="not_found" if exc.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}", "server_error")

    # ---- helpers ------------------------------------------------------------------------
    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), api_key.encode()):
            raise _Unauthorized()

    def upstream_model(name: str) -> str | None:
        if passthrough_models:
            return name
        if name != runtime.model:
            raise _UnknownModel(name, [runtime.model])
        return None

    def requests_for(body, prompt: str, max_tokens: int, reward_prompt: str) -> list:
        """One job per choice: a GenerationRequest for the engine, or a `_BestOf` job."""
        guidance = engine.resolve(body.vas)
        model = upstream_model(body.model)
        for name in body.unknown_fields():
            log.debug("ignoring unknown request field %r", name)
        reqs = [GenerationRequest(prompt=prompt, max_tokens=max_tokens,
                                  temperature=body.temperature, top_p=body.top_p, stop=body.stop,
                                  seed=None if body.seed is None else body.seed + i,
                                  guidance=guidance, model=model)
                for i in range(body.n)]
        best = best_of_request(body, guidance)
        if best is None:
            return reqs
        return [_BestOf(req, *best, reward_prompt) for req in reqs]

    def best_of_request(body, guidance) -> tuple[int, str] | None:
        """(N, reward name) when the body asks for Best-of-N, validated; else None."""
        vas = body.vas or {}
        if "best_of" not in vas:
            if "reward" in vas:
                raise ConfigError("vas.reward is only used with vas.best_of", param="vas.reward")
            return None
        n = check_best_of(vas["best_of"])
        loaded = ", ".join(sorted(rewards)) or "none"
        name = vas.get("reward")
        if name is None:
            if len(rewards) != 1:
                raise ConfigError(
                    "vas.best_of needs vas.reward naming one of the rewards the server loaded; "
                    f"loaded: {loaded}" + ("" if rewards else
                                           " (start it with --reward NAME=SPEC)"),
                    param="vas.reward")
            name = next(iter(rewards))
        if not isinstance(name, str) or name not in rewards:
            # Never load what a request names: a py: spec would run the client's code (DESIGN §5).
            raise ConfigError(f"unknown reward {_clip(repr(name))} in vas.reward; loaded: "
                              f"{loaded} (a request can only name a reward the server loaded)",
                              param="vas.reward")
        if guidance.trace or getattr(body, "logprobs", None):
            raise ConfigError("vas.trace and logprobs describe guided sampling; they are not "
                              "available with vas.best_of", param="vas.best_of")
        return n, name

    async def generate(job) -> Generation:
        if isinstance(job, _BestOf):
            return job.generation(await run_best_of(job))
        return await engine.generate(job)

    async def stream(job, outcome: Outcome) -> AsyncIterator[TokenEvent]:
        if isinstance(job, _BestOf):  # all N must finish first: the answer comes as one chunk
            res = await run_best_of(job)
            outcome.usage, outcome.finish_reason = res.usage, res.finish_reason
            yield TokenEvent(res.text, res.text.encode(), 0.0)
            return
        async for ev in engine.stream(job, outcome):
            yield ev

    async def run_best_of(job: "_BestOf") -> BestOfN:
        req = job.request
        stop = list(dict.fromkeys([*(req.stop or []), *sorted(engine.eos_texts)]))
        return await best_of_n(engine.upstream, req.prompt, n=job.n,
                               reward=rewards[job.reward], reward_prompt=job.reward_prompt,
                               max_tokens=req.max_tokens, stop=stop,
                               temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                               model=req.model)

    # ---- endpoints ----------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": runtime.model, "upstream": runtime.base_url,
                "values": sorted(engine.values), "rewards": sorted(rewards)}

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request)
        served = [] if passthrough_models else [runtime.model]
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0,
                                            "owned_by": "vas-proxy"} for m in served]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_auth(request)
        reqs = requests_for(body, body.prompt, body.max_tokens, body.prompt)
        fmt = _CompletionFormat(body)
        return await _respond(request, body, reqs, fmt)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request):
        check_auth(request)
        msgs = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt = runtime.render_messages(msgs)
        users = [m["content"] for m in msgs if m["role"] == "user"]
        reqs = requests_for(body, prompt, body.token_limit(DEFAULT_CHAT_MAX_TOKENS),
                            users[-1] if users else msgs[-1]["content"])
        fmt = _ChatFormat(body)
        return await _respond(request, body, reqs, fmt)

    async def _respond(request: Request, body, reqs: list[GenerationRequest], fmt):
        t0 = time.perf_counter()
        if body.stream:
            return StreamingResponse(_sse(request, body, reqs, fmt, t0),
                                     media_type="text/event-stream",
                                     headers={"cache-control": "no-cache"})
        gens = await asyncio.gather(*(generate(r) for r in reqs))
        usage = Usage.total([g.usage for g in gens])
        _log_summary(request, body, usage, t0)
        return fmt.full(gens, usage)

    async def _sse(request: Request, body, reqs, fmt, t0) -> AsyncIterator[str]:
        queue: asyncio.Queue = asyncio.Queue()
        outcomes = [Outcome() for _ in reqs]

        async def run(i: int):
            try:
                async for ev in stream(reqs[i], outcomes[i]):
                    await queue.put((i, ev))
                await queue.put((i, None))
            except Exception as e:  # delivered to the client as an error event
                await queue.put((i, e))

        tasks = [asyncio.create_task(run(i)) for i in range(len(reqs))]
        try:
            for chunk in fmt.stream_start(len(reqs)):
                yield _data(chunk)
            open_ = len(reqs)
            while open_:
                i, item = await queue.get()
                if item is None:
                    open_ -= 1
                    yield _data(fmt.stream_finish(i, outcomes[i].finish_reason))
                elif isinstance(item, Exception):
                    body_ = vas_error_body(item) if isinstance(item, VasError) else error_body(
                        f"internal error: {type(item).__name__}", "server_error")
                    if not isinstance(item, VasError):
                        log.error("generation failed", exc_info=item)
                    yield _data(body_)
                    yield "data: [DONE]\n\n"
                    return
                else:
                    chunk = fmt.stream_token(i, item)
                    if chunk is not None:
                        yield _data(chunk)
            usage = Usage.total([o.usage for o in outcomes])
            if body.include_usage:
                yield _data(fmt.stream_usage(usage))
            yield "data: [DONE]\n\n"
            _log_summary(request, body, usage, t0)
        finally:  # also on client disconnect (cancellation): stop every generation
            for t in tasks:
                t.cancel()

    return app


class _BestOf:
    """A choice answered by Best-of-N: the request's prompt, limits and seed, plus N and the
    name of the operator's reward that picks the winner."""

    def __init__(self, request: GenerationRequest, n: int, reward: str, reward_prompt: str):
        self.request, self.n, self.reward, self.reward_prompt = request, n, reward, reward_prompt

    def generation(self, res: BestOfN) -> "_BestOfGeneration":
        return _BestOfGeneration(res.text, res.finish_reason,
                                 [TokenEvent(res.text, res.text.encode(), 0.0)], res.usage,
                                 best_of={"n": self.n, "reward": self.reward,
                                          "scores": res.scores, "chosen": res.index})


@dataclass
class _BestOfGeneration(Generation):
    """A Best-of-N answer: non-streamed choices report it as `vas_best_of` (every sample's
    score and which one won)."""

    best_of: dict = field(default_factory=dict)


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def _log_summary(request: Request, body, u: Usage, t0: float) -> None:
    log.info("%s model=%s n=%d tokens=%d upstream_calls=%d upstream_prompt_tokens=%d "
             "upstream_completion_tokens=%d rejected_drafts=%d cache_hits=%d %.2fs",
             request.url.path, body.model, body.n, u.completion_tokens, u.upstream_calls,
             u.upstream_prompt_tokens, u.upstream_completion_tokens, u.rejected_draft_tokens,
             u.cache_hits, time.perf_counter() - t0)


def _top(ev: TokenEvent, m: int) -> list[tuple]:
    """The m most probable candidates under the guided target: (candidate, log q)."""
    if ev.probs is None or m <= 0:
        return []
    order = np.argsort(-ev.probs, kind="stable")[:m]
    return [(ev.candidates[j], float(np.log(ev.probs[j])) if ev.probs[j] > 0 else -9999.0)
            for j in order]


class _Format:
    """Shapes engine output as one endpoint's OpenAI JSON (full response and SSE chunks)."""

    object_full = object_chunk = ""

    def __init__(self, body):
        self.body = body
        self.id = f"{self.prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def envelope(self, obj: str, choices: list, usage: Usage | None = None) -> dict:
        out = {"id": self.id, "object": obj, "created": self.created, "model": self.body.model,
               "choices": choices}
        if usage is not None:
            out["usage"] = usage.openai_dict()
        return out

    def full(self, gens: list[Generation], usage: Usage) -> dict:
        choices = []
        for i, g in enumerate(gens):
            c = self.full_choice(i, g)
            if any(t.trace is not None for t in g.tokens):
                c["vas_trace"] = g.trace
            if isinstance(g, _BestOfGeneration):
                c["vas_best_of"] = g.best_of
            choices.append(c)
        return self.envelope(self.object_full, choices, usage)

    def stream_start(self, n: int) -> list[dict]:
        return []

    def stream_usage(self, usage: Usage) -> dict:
        return self.envelope(self.object_chunk, [], usage)


class _CompletionFormat(_Format):
    prefix, object_full, object_chunk = "cmpl", "text_completion", "text_completion"

    def logprobs(self, events: list[TokenEvent], offset0: int = 0) -> dict | None:
        m = self.body.logprobs
        if m is None:
            return None
        lp: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        off = offset0
        for ev in events:
            if not ev.token:
                continue
            text = ev.token.decode("utf-8", "replace")
            lp["tokens"].append(text)
            lp["token_logprobs"].append(ev.logprob)
            lp["top_logprobs"].append({c.text: v for c, v in _top(ev, m)})
            lp["text_offset"].append(off)
            off += len(text)
        return lp

    def full_choice(self, i: int, g: Generation) -> dict:
        return {"text": g.text, "index": i, "logprobs": self.logprobs(g.tokens),
                "finish_reason": g.finish_reason}

    def stream_token(self, i: int, ev: TokenEvent) -> dict | None:
        if not ev.text and self.body.logprobs is None and ev.trace is None:
            return None
        choice = {"text": ev.text, "index": i, "logprobs": self.logprobs([ev]),
                  "finish_reason": None}
        if ev.trace is not None:
            choice["vas_trace"] = [ev.trace]
        return self.envelope(self.object_chunk, [choice])

    def stream_finish(self, i: int, reason: str) -> dict:
        return self.envelope(self.object_chunk, [{"text": "", "index": i, "logprobs": None,
                                                  "finish_reason": reason}])


class _ChatFormat(_Format):
    prefix, object_full, object_chunk = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def logprobs(self, events: list[TokenEvent]) -> dict | None:
        if not self.body.logprobs:
            return None
        m = self.body.top_logprobs or 0
        content = []
        for ev in events:
            if not ev.token:
                continue
            content.append({"token": ev.token.decode("utf-8", "replace"), "logprob": ev.logprob,
                            "bytes": list(ev.token), "top_logprobs": [
                                {"token": c.text, "logprob": v, "bytes": list(c.bytes)}
                                for c, v in _top(ev, m)]})
        return {"content": content, "refusal": None}

    def full_choice(self, i: int, g: Generation) -> dict:
        return {"index": i, "message": {"role": "assistant", "content": g.text, "refusal": None},
                "logprobs": self.logprobs(g.tokens), "finish_reason": g.finish_reason}

    def stream_start(self, n: int) -> list[dict]:
        return [self.envelope(self.object_chunk, [
            {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
             "finish_reason": None}]) for i in range(n)]

    def stream_token(self, i: int, ev: TokenEvent) -> dict | None:
        if not ev.text and not self.body.logprobs and ev.trace is None:
            return None
        choice = {"index": i, "delta": {"content": ev.text}, "logprobs": self.logprobs([ev]),
                  "finish_reason": None}
        if ev.trace is not None:
            choice["vas_trace"] = [ev.trace]
        return self.envelope(self.object_chunk, [choice])

    def stream_finish(self, i: int, reason: str) -> dict:
        return self.envelope(self.object_chunk, [{"index": i, "delta": {}, "logprobs": None,
                                                  "finish_reason": reason}])


__all__ = ["create_app", "ConfigError"]
