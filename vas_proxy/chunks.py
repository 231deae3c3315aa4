"""Where the guided loop's next positions come from (docs/design.md §3): one call for one
token, a drafted call, or a drafted call read as a stream so the value model scores position i
while the upstream makes position i + 1; plus the one-batch scoring of a whole chunk's drafted
positions. A mixin of `Engine`, kept apart so each file stays one thing: the engine decides
and samples, this asks the upstream.
"""

from __future__ import annotations

# `req` is the engine's GenerationRequest (not imported: the engine imports this module)

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import numpy as np

from . import sampling
from .protocol import Candidate, Position, UpstreamResult
from .response import ResponseText
from .upstream.continuation import ChatPrompt, continued, sent_text
from .usage import Usage


class ChunkSource:
    """The upstream side of `Engine` (it sets `upstream`, `values`, `draft`, `eos_texts`,
    `batch_drafts`, `overlap` and provides `_draft_index` and `_ends`)."""

    EOS_RETRIES = 4
    RETRY_TOKENS = 4  # what a retry asks for: enough to finish a character begun
    RESOLVE_TRIES = 32  # samples asked for to tell an ambiguous "" apart (`_resolve_empty`)

    @staticmethod
    def _sent(req, resp: ResponseText):
        """What the upstream continues: the request's prompt (text, token ids or chat) followed
        by the answer so far (its text, or its tokens' own ids)."""
        return continued(req.upstream_prompt or req.prompt, resp.text, resp.ids)

    async def _call(self, req, resp: ResponseText, usage: Usage,
                    seeds: np.random.Generator, n: int, temperature: float,
                    top_k: int | None = None) -> UpstreamResult:
        t0 = time.perf_counter()
        # Unseeded requests draw random upstream seeds: caching them would only fill the cache.
        res = await self.upstream.complete(self._sent(req, resp), max_tokens=n,
                                           top_k=top_k or req.guidance.top_k, model=req.model,
                                           temperature=temperature,
                                           seed=int(seeds.integers(2**31)),
                                           cache=req.seed is not None)
        usage.upstream_seconds += time.perf_counter() - t0
        if not usage.prompt_tokens:
            usage.prompt_tokens = res.prompt_tokens
        usage.count(res)
        # candidates known by id alone (vLLM) get their texts: a no-op elsewhere
        res.positions = await self.upstream.tokenizer.name(res.positions)
        return res

    async def _positions(self, req, resp: ResponseText, usage: Usage,
                         seeds: np.random.Generator, draft_len: int
                         ) -> tuple[list[Position], bool]:
        """Top-k candidates of the next position(s) and whether they carry usable drafts;
        ([], False) when the turn has surely ended.

        draft_len > 0 asks for that many drafted tokens in one call (greedy drafts at
        temperature 0, or the upstream's own temperature-1 samples when its profile says they
        follow its reported logprobs). The upstream samples a token of its own on every call
        and, when that token is its end-of-turn token, llama-cpp-python answers with no position
        at all (its loop breaks before recording logprobs); llama.cpp's server does the same
        when its sample stops inside a UTF-8 character. Their reported logprobs do not depend
        on the sample, so asking again with another upstream seed is exact; the retries ask
        for a few tokens, so a sample that starts a character can finish it, and only the first
        position is used. After `EOS_RETRIES` such answers in a row the turn is taken as ended
        (the end token then had probability ≳ 0.5 at this position).
        """
        if draft_len > 0:
            temp = 1.0 if self.draft == "sample" else 0.0
            positions = (await self._call(req, resp, usage, seeds, draft_len, temp)).positions
            if positions:
                return positions, True
        for attempt in range(1 + self.EOS_RETRIES):
            n = 1 if attempt == 0 else self.RETRY_TOKENS
            positions = (await self._call(req, resp, usage, seeds, n, 1.0)).positions
            if positions:
                return positions[:1], False
        return [], False

    async def _resolve_empty(self, req, resp: ResponseText, usage: Usage,
                             seeds: np.random.Generator, chosen: Candidate) -> Candidate:
        """What a chosen legacy "" stands for (llama-cpp-python prints its end token and every
        piece of a UTF-8 character so, docs/design.md §2.12), asked of the upstream by
        rejection: its own samples at this position until one begins with a "" token. Those
        follow its logprobs, so the one accepted is the end token or a piece in the model's own
        proportions: the end comes back with no position (its loop stops before recording it),
        a piece as a sample that goes on to finish its character. Returns the end (a control
        token), that character (its few tokens the upstream's, unguided: text prompts cannot
        carry a piece), or `chosen` itself when no sample began so (`usage.ambiguous_ends`)."""
        for attempt in range(self.RESOLVE_TRIES):
            # temperature 0 has one answer; asked again, sample
            temperature = req.temperature if attempt == 0 or req.temperature > 0 else 1.0
            res = await self._call(req, resp, usage, seeds, self.RETRY_TOKENS, temperature, 1)
            first = res.positions[0].sampled if res.positions else None
            if first is None and res.finish_reason == "stop":
                usage.ambiguous_resolved += 1
                return Candidate("", chosen.logprob, raw=b"")
            if first is not None and first.ambiguous_empty and res.text:
                usage.ambiguous_resolved += 1
                piece = res.text[:1]
                return Candidate(piece, chosen.logprob, raw=piece.encode("utf-8"))
        return chosen

    def _batching(self, weights: dict[str, float]) -> bool:
        if self.batch_drafts is not None:
            return self.batch_drafts
        active = [self.values[n] for n, w in weights.items() if w != 0.0]
        return bool(active) and all(getattr(v, "batches_positions", False) for v in active)

    def _chunk_values(self, req, resp: ResponseText,
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
            if self._ends(pos.candidates[d]):
                break
            raws.append(pos.candidates[d].bytes)
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
                {name: v[start:start + size] for name, v in scores.items()}, weights, size,
                beta=req.guidance.beta, binary=self.binary))
            start += size
        return out

    async def _chunk(self, req, resp: ResponseText, usage: Usage,
                     seeds: np.random.Generator, draft_len: int, step: int,
                     weights: dict[str, float], guided: bool, tally: dict
                     ) -> AsyncIterator[tuple[Position, bool, np.ndarray | None]]:
        """The next positions as (position, carries a usable draft, its values when already
        scored). Streamed (`overlap`: the value model scores position i while the upstream
        makes i + 1; closing this generator cancels the call) when the upstream streams its
        logprobs, drafts are its samples and the prompt's token count is known from an earlier
        call (a stream may not report usage); else one whole call, whose drafted positions are
        scored in one batch where that pays (`batch_drafts`)."""
        if (guided and draft_len > 1 and self._overlapping(req) and usage.upstream_calls
                and not usage.cache_hits):
            read = 0
            # closed here, not when the garbage collector finds it: its bill is counted on close
            async with contextlib.aclosing(self._draft_stream(req, resp, usage, seeds,
                                                              draft_len, step)) as live:
                async for pos in live:
                    read += 1
                    tally["drafted"] += 1
                    yield pos, True, None
            if read:
                return
            draft_len = 0  # it sampled its end of turn first: ask as `_positions` does
        positions, drafted = await self._positions(req, resp, usage, seeds, draft_len)
        if drafted:
            tally["drafted"] = len(positions)
        batched: list[np.ndarray] = []
        if guided and drafted and len(positions) > 1 and self._batching(weights):
            t0 = time.perf_counter()
            batched = await asyncio.to_thread(self._chunk_values, req, resp, positions, weights)
            usage.scoring_seconds += time.perf_counter() - t0
        for i, pos in enumerate(positions):
            yield pos, drafted, batched[i] if i < len(batched) else None

    async def _draft_stream(self, req, resp: ResponseText, usage: Usage,
                            seeds: np.random.Generator, draft_len: int, step: int
                            ) -> AsyncIterator[Position]:
        """One drafted call (the upstream's temperature-1 samples), streamed. It draws its
        upstream seed as `_call` does, so it reports what the whole call would. Billed as the
        upstream says; where its stream carries no usage (llama-cpp-python), the prompt is
        counted as the first call counted it plus the `step` tokens since, and the completion
        as the positions read (`usage.estimated_prompt_tokens` says how many were estimated)."""
        t0 = time.perf_counter()
        sent = self._sent(req, resp)
        stream = self.upstream.stream_positions(
            sent, max_tokens=draft_len, top_k=req.guidance.top_k, model=req.model,
            temperature=1.0, seed=int(seeds.integers(2**31)))
        try:
            async with stream, contextlib.aclosing(stream.__aiter__()) as positions:
                async for pos in positions:
                    yield (await self.upstream.tokenizer.name([pos]))[0]
        finally:
            u = stream.usage or {}
            prompt_tokens = int(u.get("prompt_tokens") or 0)
            if not prompt_tokens:
                prompt_tokens = usage.prompt_tokens + step
                usage.estimated_prompt_tokens += prompt_tokens
            usage.count(UpstreamResult(
                positions=[], prompt=sent_text(sent), prompt_tokens=prompt_tokens,
                completion_tokens=int(u.get("completion_tokens") or stream.read),
                cached_tokens=stream.cached_tokens))
            usage.upstream_seconds += time.perf_counter() - t0

    def _overlapping(self, req) -> bool:
        if isinstance(req.upstream_prompt, ChatPrompt):  # streams are read as completions
            return False
        if self.overlap is not None:
            return self.overlap
        return self.draft == "sample" and self.upstream.profile.streams_logprobs
