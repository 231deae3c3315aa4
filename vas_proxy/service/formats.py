"""Engine output shaped as each endpoint's OpenAI JSON: the full response and the SSE chunks of
/v1/completions and /v1/chat/completions, with the `vas_*` extensions (docs/design.md §5).

Pure functions of the request body and the engine's results: no I/O, so each shape can be
checked on hand-made `Generation`s and `TokenEvent`s.
"""

from __future__ import annotations

import json
import time
import uuid

import numpy as np

from ..engine import Generation, TokenEvent
from ..usage import Usage


def sse_data(obj: dict) -> str:
    """One server-sent event carrying `obj` as compact JSON."""
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def kl_field(kl: float | None, kind: str) -> dict:
    """`vas_kl` of a choice: the KL to the base its answer paid, in nats, and its kind
    ("estimate": Σ over the states it passed of KL(q ‖ p); "bound": Best-of-N's; "none")."""
    return {"vas_kl": {"nats": None if kl is None else round(float(kl), 6), "kind": kind}}


def top_candidates(ev: TokenEvent, m: int) -> list[tuple]:
    """The m most probable candidates under the guided target: (candidate, log q)."""
    if ev.probs is None or m <= 0:
        return []
    order = np.argsort(-ev.probs, kind="stable")[:m]
    return [(ev.candidates[j], float(np.log(ev.probs[j])) if ev.probs[j] > 0 else -9999.0)
            for j in order]


class Format:
    """Shapes engine output as one endpoint's OpenAI JSON (full response and SSE chunks).
    One instance per request: every chunk of a response shares its id and creation time."""

    prefix = object_full = object_chunk = ""

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

    def full(self, gens: list[Generation], usage: Usage,
             extras: list[dict] | None = None) -> dict:
        """The non-streamed response; `extras[i]`: further fields of choice i (the strategy's,
        e.g. `vas_best_of`)."""
        choices = []
        for i, g in enumerate(gens):
            c = self.full_choice(i, g)
            if any(t.trace is not None for t in g.tokens):
                c["vas_trace"] = g.trace
            if extras:
                c.update(extras[i])
            choices.append(c)
        return self.envelope(self.object_full, choices, usage)

    def full_choice(self, i: int, g: Generation) -> dict:
        raise NotImplementedError

    def stream_start(self, n: int) -> list[dict]:
        return []

    def stream_token(self, i: int, ev: TokenEvent) -> dict | None:
        raise NotImplementedError

    def stream_finish(self, i: int, reason: str, extra: dict | None = None) -> dict:
        """The chunk that ends choice i; `extra`: further fields of that choice (`vas_kl`)."""
        raise NotImplementedError

    def stream_usage(self, usage: Usage) -> dict:
        return self.envelope(self.object_chunk, [], usage)


class CompletionFormat(Format):
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
            lp["top_logprobs"].append({c.text: v for c, v in top_candidates(ev, m)})
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

    def stream_finish(self, i: int, reason: str, extra: dict | None = None) -> dict:
        return self.envelope(self.object_chunk, [{"text": "", "index": i, "logprobs": None,
                                                  "finish_reason": reason, **(extra or {})}])


class ChatFormat(Format):
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
                                for c, v in top_candidates(ev, m)]})
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

    def stream_finish(self, i: int, reason: str, extra: dict | None = None) -> dict:
        return self.envelope(self.object_chunk, [{"index": i, "delta": {}, "logprobs": None,
                                                  "finish_reason": reason, **(extra or {})}])
