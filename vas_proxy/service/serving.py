"""The serving object behind the HTTP routes: one per app, on `app.state.serving`.

It holds the runtime and the operator's rewards, checks the API key and the model, turns a
validated request into one engine request per choice and answers them with a strategy: guided
sampling (`Guided`), or Best-of-N (`BestOf`: plain, value-pruned or over VAS samples,
`bestof_modes`) when the body asks `vas: {"best_of": N, "reward": NAME, "best_of_mode": M}`.
NAME is one of the rewards the operator loaded at start, never a spec from the request: a `py:`
spec would run the client's code (docs/design.md §5).

Streams pump every choice's tokens through one queue. A failure mid-stream is sent as a
`data: {"error": ...}` event then `[DONE]` (which the openai SDK raises), never as a silent
truncation. A client that disconnects cancels its generations, streamed or not, so no further
upstream calls are made for it; the operator's limits (`limits`) bound what a request may ask,
how many generations run at once and for how long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from ..bestof_modes import prune_weights, run_best_of
from ..bestofn import BestOfN
from ..defaults import BEST_OF_MODES
from ..engine import Engine, Generation, GenerationRequest, Outcome, TokenEvent
from ..guidance import Guidance
from ..errors import ConfigError, VasError
from ..prompting import Prepared
from ..runtime import Runtime
from ..usage import Usage
from .errors import UnknownModel, stream_error_body
from .limits import ClientGone, Limits, watched
from .metrics import Metrics
from .formats import SSE_DONE, ChatFormat, CompletionFormat, Format, kl_field, sse_data
from .schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("vas_proxy.service")
READY_TIMEOUT = 5.0  # seconds the readiness probe waits for the upstream


class Strategy(Protocol):
    """How one choice is answered. `generate` gives the whole answer; `stream` yields its
    tokens and fills in `outcome` (usage, finish reason) as it goes."""

    async def generate(self, req: GenerationRequest) -> Generation: ...

    def stream(self, req: GenerationRequest, outcome: Outcome) -> AsyncIterator[TokenEvent]: ...

    def choice_fields(self, gen: Generation) -> dict:
        """Further fields of a non-streamed choice (`vas_kl` at least)."""
        ...


class Guided:
    """Value-guided sampling: the engine's own loop."""

    def __init__(self, engine: Engine):
        self.engine = engine

    async def generate(self, req: GenerationRequest) -> Generation:
        return await self.engine.generate(req)

    def stream(self, req: GenerationRequest, outcome: Outcome) -> AsyncIterator[TokenEvent]:
        return self.engine.stream(req, outcome)

    def choice_fields(self, gen: Generation) -> dict:
        return kl_field(gen.path_kl, "estimate")


@dataclass
class BestOfGeneration(Generation):
    """A Best-of-N answer, with every sample's score and which one won, and its KL."""

    best_of: dict = field(default_factory=dict)
    best_of_kl: tuple[float | None, str] = (None, "none")


class BestOf:
    """Best-of-N (`bestof_modes.run_best_of`): each choice samples `n` answers to the request's
    prompt with its limits and seed in `mode` (plain, pruned by the value models every `block`
    tokens keeping the top `keep`, or guided by the request's guidance), and returns the one
    `reward` scores highest against `reward_prompt`. Non-streamed choices report it as
    `vas_best_of`."""

    def __init__(self, engine: Engine, n: int, reward_name: str, reward, reward_prompt: str,
                 mode: str = BEST_OF_MODES[0], block: int | None = None,
                 keep: float | None = None):
        self.engine, self.n, self.reward_name = engine, n, reward_name
        self.reward, self.reward_prompt = reward, reward_prompt
        self.mode, self.block, self.keep = mode, block, keep

    async def run(self, req: GenerationRequest) -> BestOfN:
        return await run_best_of(self.engine, req, mode=self.mode, n=self.n, reward=self.reward,
                                 reward_prompt=self.reward_prompt, block=self.block,
                                 keep=self.keep)

    async def generate(self, req: GenerationRequest) -> BestOfGeneration:
        res = await self.run(req)
        return BestOfGeneration(res.text, res.finish_reason, [_whole(res.text)], res.usage,
                                best_of={"n": self.n, "reward": self.reward_name,
                                         "mode": self.mode, "scores": res.scores,
                                         "chosen": res.index, "details": res.details},
                                best_of_kl=(res.kl, res.kl_kind))

    async def stream(self, req: GenerationRequest, outcome: Outcome
                     ) -> AsyncIterator[TokenEvent]:
        res = await self.run(req)  # all N must finish first: the answer comes as one chunk
        outcome.usage, outcome.finish_reason = res.usage, res.finish_reason
        outcome.kl, outcome.kl_kind = res.kl, res.kl_kind
        yield _whole(res.text)

    def choice_fields(self, gen: Generation) -> dict:
        return {"vas_best_of": gen.best_of, **kl_field(*gen.best_of_kl)}


def _whole(text: str) -> TokenEvent:
    """A whole answer as one event (no logprob of its own: 0)."""
    return TokenEvent(text, text.encode(), 0.0)


class Serving:
    """The OpenAI endpoints over one Runtime. `passthrough_models`: forward any `model`
    upstream (wrap); otherwise only the served model is accepted (404 for others, as OpenAI
    does)."""

    def __init__(self, runtime: Runtime, *, passthrough_models: bool = False,
                 limits: Limits | None = None):
        self.runtime, self.engine = runtime, runtime.engine
        self.rewards = dict(runtime.rewards or {})
        self.passthrough_models = passthrough_models
        self.limits = limits if limits is not None else Limits()
        self.metrics = Metrics(in_flight=lambda: self.limits.in_flight)
        self.guided = Guided(self.engine)

    # ---- checks ------------------------------------------------------------------------
    def upstream_model(self, name: str) -> str | None:
        """The model to ask the upstream for (None: its client's own)."""
        if self.passthrough_models:
            return name
        if name != self.runtime.model:
            raise UnknownModel(name, [self.runtime.model])
        return None

    def strategy(self, body: CompletionRequest | ChatCompletionRequest,
                 guidance: Guidance) -> Strategy:
        """Guided sampling, or Best-of-N when the body's `vas` asks for it. A pruned Best-of-N
        with nothing to rank by is refused here, before any upstream call."""
        vas = body.vas
        if vas is None or "best_of" not in vas.model_fields_set:
            return self.guided
        name = self.reward_name(vas.reward)
        if guidance.trace or body.logprobs:
            raise ConfigError("vas.trace and logprobs describe guided sampling; they are not "
                              "available with vas.best_of", param="vas.best_of")
        mode = vas.best_of_mode or BEST_OF_MODES[0]
        if mode == "pruned":
            prune_weights(self.engine.values, guidance.weights)
        return BestOf(self.engine, vas.best_of, name, self.rewards[name], body.reward_prompt(),
                      mode=mode, block=vas.prune_block, keep=vas.prune_keep)

    def reward_name(self, name) -> str:
        """The loaded reward `vas.reward` names (None: the only one loaded)."""
        loaded = ", ".join(sorted(self.rewards)) or "none"
        if name is None:
            if len(self.rewards) != 1:
                raise ConfigError(
                    "vas.best_of needs vas.reward naming one of the rewards the server loaded; "
                    f"loaded: {loaded}" + ("" if self.rewards else
                                           " (start it with --reward NAME=SPEC)"),
                    param="vas.reward")
            return next(iter(self.rewards))
        if not isinstance(name, str) or name not in self.rewards:
            # Never load what a request names (docs/design.md §5).
            raise ConfigError(f"unknown reward {_clip(repr(name))} in vas.reward; loaded: "
                              f"{loaded} (a request can only name a reward the server loaded)",
                              param="vas.reward")
        return name

    # ---- endpoints ---------------------------------------------------------------------
    def health(self) -> dict:
        return {"status": "ok", "model": self.runtime.model, "upstream": self.runtime.base_url,
                "values": sorted(self.engine.values), "rewards": sorted(self.rewards)}

    async def ready(self) -> tuple[bool, dict]:
        """Readiness, unlike liveness (`health`): the upstream answers (and a Redis cache)."""
        checks = {}
        up = self.engine.upstream
        try:
            await asyncio.wait_for(up.models(), READY_TIMEOUT)
            checks["upstream"] = "ok"
        except VasError as e:
            checks["upstream"] = e.message
        except Exception as e:  # a probe answers, whatever broke: not ready
            checks["upstream"] = f"failed ({type(e).__name__})"
        if hasattr(up.cache, "ping"):
            checks["cache"] = "ok" if await up.cache.ping() else "unreachable"
        return all(v == "ok" for v in checks.values()), checks

    def models(self) -> dict:
        served = [] if self.passthrough_models else [self.runtime.model]
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0,
                                            "owned_by": "vas-proxy"} for m in served]}

    async def completion(self, body: CompletionRequest, request: Request):
        prompt = await self.runtime.prepare_text(body.prompt)
        return await self.serve(request, body, prompt, CompletionFormat(body))

    async def chat(self, body: ChatCompletionRequest, request: Request):
        prompt = await self.runtime.prepare_messages(body.chat_messages())
        return await self.serve(request, body, prompt, ChatFormat(body))

    async def serve(self, request: Request, body, prompt: Prepared, fmt: Format):
        """Answer `body` on `prompt` (its text, and what the upstream continues): JSON, or an
        SSE stream."""
        guidance = self.engine.resolve(body.guidance_override())
        model = self.upstream_model(body.model)
        for name in body.unknown_fields():
            log.debug("ignoring unknown request field %r", name)
        reqs = body.generation_requests(prompt, guidance, model)
        strategy = self.strategy(body, guidance)
        self.limits.check(body)
        release = self.limits.admit(body.generation_count())
        t0 = time.perf_counter()

        def done(usage: Usage, kls: list[dict]) -> None:
            _log_summary(request.url.path, body, usage, t0)
            self.metrics.usage(usage, t0)
            self.metrics.kl(kls)

        if body.stream:
            return StreamingResponse(sse(strategy, reqs, fmt, include_usage=body.include_usage,
                                         done=done, release=release, limits=self.limits,
                                         on_error=self.metrics.error),
                                     media_type="text/event-stream",
                                     headers={"cache-control": "no-cache"})
        try:
            gens = await watched(asyncio.gather(*(strategy.generate(r) for r in reqs)),
                                 request.receive, self.limits.deadline)
        except ClientGone:
            log.info("%s: the client went away; its generations were cancelled",
                     request.url.path)
            return Response(status_code=499)  # nobody reads it
        except asyncio.TimeoutError:
            raise self.limits.past_deadline() from None
        finally:
            release()
        usage = Usage.total([g.usage for g in gens])
        extras = [strategy.choice_fields(g) for g in gens]
        done(usage, [e["vas_kl"] for e in extras])
        return fmt.full(gens, usage, extras)


async def sse(strategy: Strategy, reqs: list[GenerationRequest], fmt: Format, *,
              include_usage: bool = False,
              done: Callable[[Usage, list[dict]], None] | None = None,
              release: Callable[[], None] | None = None, limits: Limits | None = None,
              on_error: Callable[[str | None], None] | None = None) -> AsyncIterator[str]:
    """The SSE events of one streamed response: every choice generates concurrently, its
    tokens are sent as they come; `done(usage, each choice's vas_kl)` once all finished,
    `release()` however it ends; `on_error(code)` for a failure sent as an event. Closing this
    generator (the client disconnected) cancels every generation; so does the deadline of
    `limits`, with an error event."""
    queue: asyncio.Queue = asyncio.Queue()
    outcomes = [Outcome() for _ in reqs]
    kls: list[dict] = [{}] * len(reqs)  # each choice's vas_kl, made when it finishes
    deadline = limits.deadline if limits is not None else None
    until = None if deadline is None else time.monotonic() + deadline

    async def run(i: int):
        try:
            async for ev in strategy.stream(reqs[i], outcomes[i]):
                await queue.put((i, ev))
            await queue.put((i, None))
        except Exception as e:  # delivered to the client as an error event
            await queue.put((i, e))

    tasks = [asyncio.create_task(run(i)) for i in range(len(reqs))]
    try:
        for chunk in fmt.stream_start(len(reqs)):
            yield sse_data(chunk)
        open_ = len(reqs)
        while open_:
            try:
                i, item = await asyncio.wait_for(
                    queue.get(), None if until is None else max(0.0, until - time.monotonic()))
            except asyncio.TimeoutError:
                item = limits.past_deadline()
                i = -1
            if item is None:
                open_ -= 1
                kls[i] = kl_field(outcomes[i].kl, outcomes[i].kl_kind)
                yield sse_data(fmt.stream_finish(i, outcomes[i].finish_reason, kls[i]))
            elif isinstance(item, Exception):
                err = stream_error_body(item)
                if on_error is not None:
                    on_error(err["error"]["code"])
                yield sse_data(err)
                yield SSE_DONE
                return
            else:
                chunk = fmt.stream_token(i, item)
                if chunk is not None:
                    yield sse_data(chunk)
        usage = Usage.total([o.usage for o in outcomes])
        if include_usage:
            yield sse_data(fmt.stream_usage(usage))
        yield SSE_DONE
        if done is not None:
            done(usage, [k["vas_kl"] for k in kls])
    finally:  # also on client disconnect (cancellation): stop every generation
        for t in tasks:
            t.cancel()
        if release is not None:
            release()


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def _log_summary(path: str, body, u: Usage, t0: float) -> None:
    log.info("%s model=%s n=%d tokens=%d upstream_calls=%d upstream_prompt_tokens=%d "
             "upstream_completion_tokens=%d rejected_drafts=%d cache_hits=%d %.2fs",
             path, body.model, body.n, u.completion_tokens, u.upstream_calls,
             u.upstream_prompt_tokens, u.upstream_completion_tokens, u.rejected_draft_tokens,
             u.cache_hits, time.perf_counter() - t0)
