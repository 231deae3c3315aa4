"""The guided generator: the one engine behind the CLI, the service and `wrap`
(docs/design.md §6).

Each step asks the upstream for the top-k next-token candidates of prompt + response so far,
scores them with the value models, and samples from the target q (docs/design.md §1) with the
request's own seeded generator. Value scoring runs in a worker thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from . import sampling
from .defaults import MAX_TOKENS, TEMPERATURE, TOP_P
from .errors import ConfigError
from .guidance import Guidance
from .protocol import Candidate, Position
from .response import ResponseText
from .upstream.client import UpstreamClient
from .usage import Usage
from .values import ValueFunction


@dataclass
class GenerationRequest:
    """One guided generation. `prompt` is the exact text sent upstream (chat template applied)."""

    prompt: str
    max_tokens: int = MAX_TOKENS
    temperature: float = TEMPERATURE
    top_p: float = TOP_P
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    guidance: Guidance = field(default_factory=Guidance)
    model: str | None = None  # upstream model; None: the client's own


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


class Engine:
    """Guided generation against one upstream with a fixed set of loaded value models."""

    EOS_RETRIES = 4
    MAX_ADAPTIVE_DRAFT = 12

    def __init__(self, upstream: UpstreamClient, values: Mapping[str, ValueFunction] | None = None,
                 *, defaults: Guidance | None = None, eos_texts: list[str] | None = None,
                 draft: str | None = None, batch_drafts: bool | None = None):
        self.upstream = upstream
        self.values = dict(values or {})
        self.defaults = replace(defaults) if defaults else Guidance()
        if self.defaults.speculate is None:  # the profile's: adaptive where drafts are exact
            self.defaults.speculate = upstream.profile.default_speculate
        self.defaults.validate()
        # Score all of a chunk's drafted positions in one forward (docs/design.md §3): a win
        # where a forward costs about the same for 1 or L positions (accelerators); on a CPU
        # the cost grows with the tokens, and positions after a rejected draft are wasted.
        # None: batch when every value model says batching pays (`batches_positions`).
        self.batch_drafts = batch_drafts
        # Candidate texts that end the answer (the model's end-of-turn token as the upstream
        # spells it). They are never appended to the response.
        self.eos_texts = set(eos_texts or [])
        # Speculative drafts: the upstream's own temperature-1 samples (d = its reported p) only
        # where its profile says those follow its logprobs; greedy drafts (d = δ) otherwise.
        if draft is None:
            draft = "sample" if upstream.profile.samples_follow_logprobs else "greedy"
        if draft not in ("sample", "greedy"):
            raise ConfigError("draft must be 'sample' or 'greedy'")
        self.draft = draft

    def resolve(self, override: Mapping | None) -> Guidance:
        """One request's guidance: the server defaults overridden by `override` (checked by
        `GUIDANCE_RULES`), whose weights may only name the loaded value models."""
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

    async def _call(self, req: GenerationRequest, text: str, usage: Usage,
                    seeds: np.random.Generator, n: int, temperature: float) -> list[Position]:
        t0 = time.perf_counter()
        # Unseeded requests draw random upstream seeds: caching them would only fill the cache.
        res = await self.upstream.complete(req.prompt + text, max_tokens=n,
                                           top_k=req.guidance.top_k, model=req.model,
                                           temperature=temperature,
                                           seed=int(seeds.integers(2**31)),
                                           cache=req.seed is not None)
        usage.upstream_seconds += time.perf_counter() - t0
        if not usage.prompt_tokens:
            usage.prompt_tokens = res.prompt_tokens
        usage.count(res)
        return res.positions

    async def _positions(self, req: GenerationRequest, text: str, usage: Usage,
                         seeds: np.random.Generator, draft_len: int
                         ) -> tuple[list[Position], bool]:
        """Top-k candidates of the next position(s) and whether they carry usable drafts;
        ([], False) when the turn has surely ended.

        draft_len > 0 asks for that many drafted tokens in one call (greedy drafts at
        temperature 0, or the upstream's own temperature-1 samples when its profile says they
        follow its reported logprobs). The upstream samples a token of its own on every call
        and, when that token is its end-of-turn token, llama-cpp-python answers with no position
        at all (its loop breaks before recording logprobs). Its reported logprobs do not depend
        on its sample, so asking again with another upstream seed is exact; after `EOS_RETRIES`
        such answers in a row the turn is taken as ended (the end token then had probability
        ≳ 0.5 at this position).
        """
        if draft_len > 0:
            temp = 1.0 if self.draft == "sample" else 0.0
            positions = await self._call(req, text, usage, seeds, draft_len, temp)
            if positions:
                return positions, True
        for _ in range(1 + self.EOS_RETRIES):
            positions = await self._call(req, text, usage, seeds, 1, 1.0)
            if positions:
                return positions[:1], False
        return [], False

    def _batching(self, weights: dict[str, float]) -> bool:
        if self.batch_drafts is not None:
            return self.batch_drafts
        active = [self.values[n] for n, w in weights.items() if w != 0.0]
        return bool(active) and all(getattr(v, "batches_positions", False) for v in active)

    def _chunk_values(self, req: GenerationRequest, resp: ResponseText,
                      positions: list[Position], weights: dict[str, float]
                      ) -> list[np.ndarray]:
        """Values of the candidates at each drafted position the chunk can reach (position i's
        response is the current one plus drafts 0..i-1), from one scoring call per value model:
        the same strings, so the same values, as scoring position by position."""
        reach, raws = 1, []
        for pos in positions[:-1]:
            d = self._draft_index(pos, pos.candidates)
            if d is None or d is False:
                break
            raw = pos.candidates[d].bytes
            if not raw or pos.candidates[d].text in self.eos_texts:
                break
            raws.append(raw)
            reach += 1
        texts = [resp.text] + resp.preview(raws)
        reach = min(reach, len(texts))
        flat, sizes = [], []
        for i in range(reach):
            tail = texts[i][len(resp.text):]
            cands = positions[i].candidates
            flat += [tail + c.bytes.decode("utf-8", "ignore") for c in cands]
            sizes.append(len(cands))
        scores = {name: self.values[name].score(req.prompt, resp.text, flat)
                  for name, w in weights.items() if w != 0.0}
        out, start = [], 0
        for size in sizes:  # centred per position, as one position's scoring is
            out.append(sampling.combine_values(
                {name: v[start:start + size] for name, v in scores.items()}, weights, size))
            start += size
        return out

    def _draft_len(self, g: Guidance, accepted: int, trials: int, left: int) -> int:
        speculate = self.defaults.speculate if g.speculate is None else g.speculate
        if speculate == 0:
            return 0
        if speculate > 0:
            return min(speculate, left)
        # adaptive: running acceptance rate of this request, with a prior of 0.6 (4 pseudo-trials)
        alpha = (accepted + 2.4) / (trials + 4.0)
        return min(sampling.choose_draft_len(alpha, self.MAX_ADAPTIVE_DRAFT), left)

    def _draft_index(self, pos: Position, cands: list[Candidate]) -> int | None | bool:
        """Index of the upstream's drafted token among the candidates; None when it is not one
        of them; False when it cannot be told (no draft, or an empty text that collides)."""
        d = pos.sampled
        if d is None or not d.bytes:
            return False
        matches = [j for j, c in enumerate(cands) if c.bytes == d.bytes]
        if len(matches) > 1:
            return False
        return matches[0] if matches else None

    async def stream(self, req: GenerationRequest, outcome: Outcome | None = None
                     ) -> AsyncIterator[TokenEvent]:
        """Yield one TokenEvent per generated token; `outcome` is filled in as it goes.

        With `speculate`, each upstream call drafts several tokens whose top-k we see at every
        position, and the speculative rule (docs/design.md §3) accepts or replaces each draft so
        the output is distributed exactly as with one token per call. A draft that cannot be matched
        to a candidate is ignored (we sample from q directly and end the chunk: also exact).
        """
        g = req.guidance
        outcome = outcome if outcome is not None else Outcome()
        usage = outcome.usage
        weights = self._weights(g)
        guided = g.beta != 0 and any(w != 0 for w in weights.values())
        rng = np.random.default_rng(req.seed)
        # Upstream seeds come from their own stream so retries never shift our samples.
        seeds = np.random.default_rng(None if req.seed is None else [req.seed, 1])
        resp = ResponseText(req.stop or [])
        step, accepted_n, trials = 0, 0, 0
        while step < req.max_tokens:
            draft_len = self._draft_len(g, accepted_n, trials, req.max_tokens - step)
            positions, drafted = await self._positions(req, resp.text, usage, seeds, draft_len)
            if not positions:
                outcome.finish_reason = "stop"
                tail = resp.flush(final=True)
                if tail:
                    yield TokenEvent(tail, b"", 0.0)
                return
            kept = 0  # drafts accepted in this chunk
            batched: list[np.ndarray] = []
            if guided and drafted and len(positions) > 1 and self._batching(weights):
                t0 = time.perf_counter()
                batched = await asyncio.to_thread(self._chunk_values, req, resp, positions,
                                                  weights)
                usage.scoring_seconds += time.perf_counter() - t0
            try:
                for n_pos, pos in enumerate(positions):
                    cands = pos.candidates
                    lps = [c.logprob for c in cands]
                    values = np.zeros(len(cands))
                    if guided and n_pos < len(batched):
                        values = batched[n_pos]
                    elif guided:
                        t0 = time.perf_counter()
                        values = await asyncio.to_thread(self._score, req.prompt, resp.text,
                                                         cands, weights)
                        usage.scoring_seconds += time.perf_counter() - t0
                    q = sampling.apply_top_p(
                        sampling.target_probs(lps, values, g.beta, req.temperature), req.top_p)
                    accepted = False
                    draft = self._draft_index(pos, cands) if drafted else False
                    if draft is False:
                        i = sampling.sample_index(q, rng)
                    else:
                        d = (np.eye(len(cands))[draft]
                             if self.draft == "greedy" and draft is not None
                             else np.exp(np.asarray(lps, dtype=np.float64)))
                        accepted, i = sampling.speculative_accept(q, d, draft, rng)
                        trials += 1
                        accepted_n += accepted
                        kept += accepted
                        usage.draft_trials += 1
                        usage.drafts_accepted += accepted
                    ev, ended = self._emit(cands, lps, values, q, i, g, resp,
                                           last=step + 1 == req.max_tokens)
                    usage.completion_tokens += 1
                    step += 1
                    yield ev
                    if ended:
                        outcome.finish_reason = "stop"
                        return
                    if not accepted or step >= req.max_tokens:
                        break
            finally:
                if drafted:  # billed drafted tokens we did not keep
                    usage.rejected_draft_tokens += len(positions) - kept

    def _emit(self, cands, lps, values, q, i, g: Guidance, resp: ResponseText, last: bool
              ) -> tuple[TokenEvent, bool]:
        """The event for chosen candidate i, and whether it ends the answer."""
        chosen = cands[i]
        trace = None
        if g.trace:
            trace = {"chosen": chosen.text, "candidates": [
                {"token": c.text, "logprob": c.logprob, "value": float(v), "prob": float(p)}
                for c, v, p in zip(cands, values, q)]}
        ev = TokenEvent("", chosen.bytes, float(np.log(q[i])), sampling.kl_step(q, lps, i),
                        trace, cands, q)
        # An empty token cannot extend a text prompt: llama-cpp-python prints its end-of-turn
        # token (and partial UTF-8 tokens, which collide with it) as "". It ends the turn.
        if chosen.text in self.eos_texts or not chosen.bytes:
            ev.text = resp.flush(final=True)
            return ev, True
        stopped = resp.append(chosen.bytes)
        ev.text = resp.flush(final=stopped or last)
        return ev, stopped

    async def generate(self, req: GenerationRequest) -> Generation:
        outcome = Outcome()
        events = [ev async for ev in self.stream(req, outcome)]
        return Generation(text="".join(ev.text for ev in events),
                          finish_reason=outcome.finish_reason, tokens=events,
                          usage=outcome.usage, kl=sum(ev.kl for ev in events))
