"""The guided generator: the one engine behind the CLI, the service and `wrap` (DESIGN §6).

Each step asks the upstream for the top-k next-token candidates of prompt + response so far,
scores them with the value models, and samples from the DESIGN §1 target q with the request's
own seeded generator. Value scoring runs in a worker thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from . import sampling
from .errors import ConfigError
from .protocol import Candidate, Position
from .upstream.client import UpstreamClient
from .values import ValueFunction


@dataclass
class Guidance:
    """Per-request guidance: the body's `vas` field (DESIGN §5), server defaults otherwise."""

    beta: float = 1.0
    top_k: int = 20
    weights: dict[str, float] | None = None
    speculate: int = 0
    trace: bool = False

    def merged(self, override: Mapping | None) -> "Guidance":
        """These defaults overridden by a request's `vas` object (validated)."""
        if not override:
            return Guidance(**asdict(self))
        if not isinstance(override, Mapping):
            raise ConfigError("`vas` must be an object", param="vas")
        known = set(asdict(self))
        unknown = set(override) - known - {"best_of", "reward"}
        if unknown:
            raise ConfigError(f"unknown `vas` field(s): {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(known))}", param="vas")
        out = Guidance(**{**asdict(self), **{k: v for k, v in override.items() if k in known}})
        out.validate()
        return out

    def validate(self) -> None:
        def bad(field_, msg):
            raise ConfigError(f"vas.{field_} {msg}", param=f"vas.{field_}")

        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) \
                or not np.isfinite(self.beta):
            bad("beta", "must be a finite number")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            bad("top_k", "must be an integer >= 1")
        if isinstance(self.speculate, bool) or not isinstance(self.speculate, int) \
                or self.speculate < 0:
            bad("speculate", "must be an integer >= 0")
        if not isinstance(self.trace, bool):
            bad("trace", "must be true or false")
        if self.weights is not None:
            if not isinstance(self.weights, Mapping) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                    for v in self.weights.values()):
                bad("weights", "must map value-model names to finite numbers")


@dataclass
class GenerationRequest:
    """One guided generation. `prompt` is the exact text sent upstream (chat template applied)."""

    prompt: str
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    guidance: Guidance = field(default_factory=Guidance)
    model: str | None = None  # upstream model; None: the client's own


@dataclass
class Usage:
    """Counts for `usage` and `usage.vas` (DESIGN §5), plus timings for benchmarks."""

    prompt_tokens: int = 0  # the prompt as the upstream counted it (first call)
    completion_tokens: int = 0
    upstream_calls: int = 0
    upstream_prompt_tokens: int = 0
    upstream_completion_tokens: int = 0
    cache_hits: int = 0
    rejected_draft_tokens: int = 0
    upstream_seconds: float = 0.0
    scoring_seconds: float = 0.0

    def vas_dict(self) -> dict:
        return {"upstream_calls": self.upstream_calls,
                "upstream_prompt_tokens": self.upstream_prompt_tokens,
                "upstream_completion_tokens": self.upstream_completion_tokens,
                "cache_hits": self.cache_hits,
                "rejected_draft_tokens": self.rejected_draft_tokens}

    def add(self, other: "Usage") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


@dataclass
class TokenEvent:
    """One generated token: `text` is the newly printable text (may be '' while a multi-byte
    character or a possible stop string is incomplete)."""

    text: str
    token: bytes
    logprob: float  # log q of the chosen token under the target
    kl: float = 0.0  # log q − log p of the chosen token (p = base top-k renormalised)
    trace: dict | None = None
    candidates: list[Candidate] = field(default_factory=list, repr=False)
    probs: np.ndarray | None = field(default=None, repr=False)  # the target q over candidates


@dataclass
class Outcome:
    """Filled in while `Engine.stream` runs: usage so far and, at the end, why it stopped."""

    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "length"


@dataclass
class Generation:
    text: str
    finish_reason: str
    tokens: list[TokenEvent]
    usage: Usage
    kl: float = 0.0  # Σ log q − log p over the chosen tokens (p = base top-k renormalised)

    @property
    def trace(self) -> list[dict]:
        return [t.trace for t in self.tokens if t.trace is not None]


class _Response:
    """UTF-8-safe accumulation of token bytes, with stop-string detection and hold-back."""

    def __init__(self, stop: list[str]):
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.text = ""
        self.stop = [s for s in stop if s]
        self._emitted = 0

    def append(self, raw: bytes) -> bool:
        """Add a token; True when a stop string now occurs (text is cut before it)."""
        self.text += self._decoder.decode(raw)
        hits = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            return True
        return False

    def flush(self, final: bool) -> str:
        """Text safe to emit now: hold back a tail that could still grow into a stop string."""
        end = len(self.text)
        if not final:
            for s in self.stop:
                for n in range(min(len(s) - 1, end), 0, -1):
                    if self.text.endswith(s[:n]):
                        end = min(end, len(self.text) - n)
                        break
        end = max(end, self._emitted)
        out, self._emitted = self.text[self._emitted:end], end
        return out


class Engine:
    """Guided generation against one upstream with a fixed set of loaded value models."""

    EOS_RETRIES = 4

    def __init__(self, upstream: UpstreamClient, values: Mapping[str, ValueFunction] | None = None,
                 *, defaults: Guidance | None = None, eos_texts: list[str] | None = None):
        self.upstream = upstream
        self.values = dict(values or {})
        self.defaults = defaults or Guidance()
        self.defaults.validate()
        # Candidate texts that end the answer (the model's end-of-turn token as the upstream
        # spells it). They are never appended to the response.
        self.eos_texts = set(eos_texts or [])

    def resolve(self, override: Mapping | None) -> Guidance:
        g = self.defaults.merged(override)
        if g.weights is not None:
            unknown = set(g.weights) - set(self.values)
            if unknown:
                raise ConfigError(
                    f"unknown value model(s) in vas.weights: {', '.join(sorted(unknown))}; "
                    f"loaded: {', '.join(sorted(self.values)) or 'none'}", param="vas.weights")
        return g

    def _weights(self, g: Guidance) -> dict[str, float]:
        if g.weights is not None:
            return {k: float(v) for k, v in g.weights.items()}
        return {name: 1.0 for name in self.values}

    def _score(self, prompt: str, response: str, cands: list[Candidate],
               weights: dict[str, float]) -> np.ndarray:
        texts = [c.bytes.decode("utf-8", "ignore") for c in cands]
        scores = {name: self.values[name].score(prompt, response, texts)
                  for name, w in weights.items() if w != 0.0}
        return sampling.combine_values(scores, weights, len(cands))

    async def _candidates(self, req: GenerationRequest, text: str, usage: Usage,
                          seeds: np.random.Generator) -> Position | None:
        """Top-k candidates of the next position, or None when the turn has surely ended.

        The upstream samples a token of its own on every call and, when that token is its
        end-of-turn token, llama-cpp-python answers with no position at all (its loop breaks
        before recording logprobs). Its reported logprobs do not depend on its sample, so asking
        again with another upstream seed is exact; after `EOS_RETRIES` such answers in a row the
        turn is taken as ended (the end token then had probability ≳ 0.5 at this position).
        """
        for _ in range(1 + self.EOS_RETRIES):
            t0 = time.perf_counter()
            res = await self.upstream.complete(req.prompt + text, max_tokens=1,
                                               top_k=req.guidance.top_k, model=req.model,
                                               seed=int(seeds.integers(2**31)))
            usage.upstream_seconds += time.perf_counter() - t0
            usage.upstream_calls += 1
            if usage.upstream_calls == 1:
                usage.prompt_tokens = res.prompt_tokens
            usage.upstream_prompt_tokens += res.prompt_tokens
            usage.upstream_completion_tokens += res.completion_tokens
            usage.cache_hits += int(res.cached)
            if res.positions:
                return res.positions[0]
        return None

    async def stream(self, req: GenerationRequest, outcome: Outcome | None = None
                     ) -> AsyncIterator[TokenEvent]:
        """Yield one TokenEvent per generated token; `outcome` is filled in as it goes."""
        g = req.guidance
        outcome = outcome if outcome is not None else Outcome()
        usage = outcome.usage
        weights = self._weights(g)
        guided = g.beta != 0 and any(w != 0 for w in weights.values())
        rng = np.random.default_rng(req.seed)
        # Upstream seeds come from their own stream so retries never shift our samples.
        seeds = np.random.default_rng(None if req.seed is None else [req.seed, 1])
        resp = _Response(req.stop or [])
        for step in range(req.max_tokens):
            pos = await self._candidates(req, resp.text, usage, seeds)
            if pos is None:
                outcome.finish_reason = "stop"
                tail = resp.flush(final=True)
                if tail:
                    yield TokenEvent(tail, b"", 0.0)
                return
            cands = pos.candidates
            lps = [c.logprob for c in cands]
            values = np.zeros(len(cands))
            if guided:
                t0 = time.perf_counter()
                values = await asyncio.to_thread(self._score, req.prompt, resp.text, cands, weights)
                usage.scoring_seconds += time.perf_counter() - t0
            q = sampling.apply_top_p(sampling.target_probs(lps, values, g.beta, req.temperature),
                                     req.top_p)
            i = sampling.sample_index(q, rng)
            chosen = cands[i]
            usage.completion_tokens += 1
            trace = None
            if g.trace:
                trace = {"chosen": chosen.text, "candidates": [
                    {"token": c.text, "logprob": c.logprob, "value": float(v), "prob": float(p)}
                    for c, v, p in zip(cands, values, q)]}
            ev = TokenEvent("", chosen.bytes, float(np.log(q[i])),
                            sampling.kl_step(q, lps, i), trace, cands, q)
            # An empty token cannot extend a text prompt: llama-cpp-python prints its end-of-turn
            # token (and partial UTF-8 tokens, which collide with it) as "". It ends the turn.
            if chosen.text in self.eos_texts or not chosen.bytes:
                outcome.finish_reason = "stop"
                ev.text = resp.flush(final=True)
                yield ev
                return
            stopped = resp.append(chosen.bytes)
            ev.text = resp.flush(final=stopped or step == req.max_tokens - 1)
            yield ev
            if stopped:
                outcome.finish_reason = "stop"
                return

    async def generate(self, req: GenerationRequest) -> Generation:
        outcome = Outcome()
        events = [ev async for ev in self.stream(req, outcome)]
        return Generation(text="".join(ev.text for ev in events),
                          finish_reason=outcome.finish_reason, tokens=events,
                          usage=outcome.usage, kl=sum(ev.kl for ev in events))
