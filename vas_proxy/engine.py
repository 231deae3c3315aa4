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
from .chunks import ChunkSource
from .response import ResponseText
from .errors import UpstreamError
from .upstream.client import UpstreamClient
from .upstream.continuation import ChatPrompt, TokenPrompt
from .usage import Usage
from .values import ValueFunction
from .values.binary import binary_scales


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
    upstream_prompt: TokenPrompt | ChatPrompt | None = None


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

    @property
    def state_kl(self) -> float:
        """KL(q ‖ p) at the state this token was drawn in: `kl`'s expectation under q (0 where
        there was no q: a flushed tail, a whole Best-of-N answer)."""
        if self.probs is None:
            return 0.0
        return sampling.kl_to_base(self.probs, [c.logprob for c in self.candidates])


@dataclass
class Outcome:
    """Filled in while an answer streams: usage so far, the KL to the base paid so far and,
    at the end, why it stopped. The engine's KL is Σ over the states it passed of KL(q ‖ p)
    (kind "estimate", the eval's `kl_path`); Best-of-N sets its bound ("bound"), or None where
    there is none ("none")."""

    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "length"
    kl: float | None = 0.0
    kl_kind: str = "estimate"


@dataclass
class Generation:
    text: str
    finish_reason: str
    tokens: list[TokenEvent]
    usage: Usage
    kl: float = 0.0  # Σ log q − log p over the chosen tokens (p = base top-k renormalised)
    # Σ over the states it passed of KL(q ‖ p): the same expectation as `kl`, without the noise
    # of which token was drawn at each. The engine passes the sum its stream kept (`Outcome.kl`);
    # otherwise it is summed from the tokens once, here.
    path_kl: float | None = None

    def __post_init__(self):
        if self.path_kl is None:
            self.path_kl = sum(t.state_kl for t in self.tokens)

    @property
    def trace(self) -> list[dict]:
        return [t.trace for t in self.tokens if t.trace is not None]


class Engine(ChunkSource):
    """Guided generation against one upstream with a fixed set of loaded value models."""
    MAX_ADAPTIVE_DRAFT = 12

    def __init__(self, upstream: UpstreamClient, values: Mapping[str, ValueFunction] | None = None,
                 *, defaults: Guidance | None = None, eos_texts: list[str] | None = None,
                 draft: str | None = None, batch_drafts: bool | None = None,
                 overlap: bool | None = None):
        self.upstream = upstream
        self.values = dict(values or {})
        self.binary = binary_scales(self.values)  # `binary:` values: their own tilt
        self.defaults = replace(defaults) if defaults else Guidance()
        if self.defaults.speculate is None:  # the profile's: adaptive where drafts are exact
            self.defaults.speculate = upstream.profile.default_speculate
        self.defaults.validate()
        # Score all of a chunk's drafted positions in one forward (docs/design.md §3): a win
        # where a forward costs about the same for 1 or L positions (accelerators); on a CPU
        # the cost grows with the tokens, and positions after a rejected draft are wasted.
        # None: batch when every value model says batching pays (`batches_positions`).
        self.batch_drafts = batch_drafts
        # Read drafted calls as streams and score each position while the upstream makes the
        # next (`_chunk`); None: where the profile streams logprobs and drafts are samples.
        self.overlap = overlap
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

    def _draft_len(self, g: Guidance, accepted: int, trials: int, left: int) -> int:
        speculate = self.defaults.speculate if g.speculate is None else g.speculate
        if speculate == 0:
            return 0
        if speculate > 0:
            return min(speculate, left)
        # adaptive: running acceptance rate of this request, with a prior of 0.6 (4 pseudo-trials)
        alpha = (accepted + 2.4) / (trials + 4.0)
        return min(sampling.choose_draft_len(alpha, self.MAX_ADAPTIVE_DRAFT), left)

    def _ends(self, c: Candidate) -> bool:
        """Whether choosing `c` ends the answer: the model's end-of-turn token as the upstream
        spells it, or a token it reports as printing no bytes (a control token, chat shape). The
        legacy shape's "" is ambiguous (llama-cpp-python: special and partial-UTF-8 tokens
        collide): the stream asks the upstream which it is (`_resolve_empty`); one that could
        not be told ends the answer, counted in `usage.ambiguous_ends` (design §2.12)."""
        return c.text in self.eos_texts or c.special or c.ambiguous_empty

    def _draft_index(self, pos: Position, cands: list[Candidate]) -> int | None | bool:
        """Index of the upstream's drafted token among the candidates; None when it is not one
        of them; False when it cannot be told (no draft, or an empty text that collides)."""
        d = pos.sampled
        if d is None:
            return False
        if d.id is not None and all(c.id is not None for c in cands):
            matches = [j for j, c in enumerate(cands) if c.id == d.id]
            return matches[0] if matches else None
        if not d.bytes:
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
        by_ids = isinstance(req.upstream_prompt, TokenPrompt)
        step, accepted_n, trials = 0, 0, 0
        while step < req.max_tokens:
            draft_len = self._draft_len(g, accepted_n, trials, req.max_tokens - step)
            tally = {"drafted": 0}  # billed drafted positions of this chunk
            chunk = self._chunk(req, resp, usage, seeds, draft_len, step, weights, guided, tally)
            kept = got = 0  # drafts accepted in this chunk, positions read
            try:
                async for pos, drafted, scored in chunk:
                    got += 1
                    cands = pos.candidates
                    lps = [c.logprob for c in cands]
                    values = np.zeros(len(cands))
                    if guided and scored is not None:
                        values = scored
                    elif guided:
                        t0 = time.perf_counter()
                        # one position: the chunk scorer's case of a chunk of one
                        values = (await asyncio.to_thread(self._chunk_values, req, resp,
                                                          [pos], weights))[0]
                        usage.scoring_seconds += time.perf_counter() - t0
                    q = sampling.apply_top_p(
                        sampling.target_probs(lps, values, g.beta, req.temperature), req.top_p)
                    q = self._reachable(q, cands, usage, by_ids)
                    accepted = False
                    draft = self._draft_index(pos, cands) if drafted else False
                    if draft is False:
                        i = sampling.sample_index(q, rng)
                    else:
                        if self.draft == "greedy":  # d = δ at the draft, maybe outside them
                            d = (np.eye(len(cands))[draft] if draft is not None
                                 else np.zeros(len(cands)))
                        else:
                            d = np.exp(np.asarray(lps, dtype=np.float64))
                        accepted, i = sampling.speculative_accept(q, d, draft, rng)
                        trials += 1
                        accepted_n += accepted
                        kept += accepted
                        usage.draft_trials += 1
                        usage.drafts_accepted += accepted
                    if cands[i].ambiguous_empty:  # the legacy "": ask what it stands for
                        cands = list(cands)
                        cands[i] = await self._resolve_empty(req, resp, usage, seeds, cands[i])
                    ev, ended = self._emit(cands, lps, values, q, i, g, resp,
                                           last=step + 1 == req.max_tokens, by_ids=by_ids)
                    if ended and cands[i].ambiguous_empty:
                        usage.ambiguous_ends += 1
                    usage.completion_tokens += 1
                    outcome.kl += ev.state_kl
                    step += 1
                    yield ev
                    if ended:
                        outcome.finish_reason = "stop"
                        return
                    if not accepted or step >= req.max_tokens:
                        break
            finally:
                await chunk.aclose()  # a stream still open is cancelled
                usage.rejected_draft_tokens += tally["drafted"] - kept  # billed, not kept
            if not got:  # the turn has surely ended
                outcome.finish_reason = "stop"
                tail = resp.flush(final=True)
                if tail:
                    yield TokenEvent(tail, b"", 0.0)
                return

    @staticmethod
    def _reachable(q: np.ndarray, cands: list[Candidate], usage: Usage,
                   by_ids: bool) -> np.ndarray:
        """q without the candidates this prompt cannot carry: on text and chat prompts, pieces
        of a UTF-8 character (their bytes are not text until the next token; re-sent as text
        they would be lost); on any, candidates whose bytes are unknown (`Candidate.unnamed`:
        the answer could not say them). Their mass is renormalised away and counted."""
        cut = [j for j, c in enumerate(cands)
               if c.unnamed or (not by_ids and c.raw and c.partial_utf8)]
        if not cut:
            return q
        kept = q.copy()
        kept[cut] = 0.0
        if kept.sum() <= 0.0:  # nothing else to choose: keep q (the text path's old way)
            return q
        usage.unreachable_mass += float(q[cut].sum())
        return kept / kept.sum()

    def _emit(self, cands, lps, values, q, i, g: Guidance, resp: ResponseText, last: bool,
              by_ids: bool = False) -> tuple[TokenEvent, bool]:
        """The event for chosen candidate i, and whether it ends the answer."""
        chosen = cands[i]
        trace = None
        if g.trace:
            trace = {"chosen": chosen.text, "candidates": [
                {"token": c.text, "logprob": c.logprob, "value": float(v), "prob": float(p)}
                for c, v, p in zip(cands, values, q)]}
        ev = TokenEvent("", chosen.bytes, float(np.log(q[i])), sampling.kl_step(q, lps, i),
                        trace, cands, q)
        if self._ends(chosen):
            ev.text = resp.flush(final=True)
            return ev, True
        if by_ids and chosen.id is None:
            raise UpstreamError("the upstream reported a candidate without its token id, which "
                                "a token-id prompt needs; use --continuation completions")
        stopped = resp.append(chosen.bytes, chosen.id)
        ev.text = resp.flush(final=stopped or last)
        return ev, stopped

    async def generate(self, req: GenerationRequest) -> Generation:
        outcome = Outcome()
        events = [ev async for ev in self.stream(req, outcome)]
        return Generation(text="".join(ev.text for ev in events),
                          finish_reason=outcome.finish_reason, tokens=events,
                          usage=outcome.usage, kl=sum(ev.kl for ev in events),
                          path_kl=outcome.kl)
