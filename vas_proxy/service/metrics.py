"""Prometheus metrics of one app (`GET /metrics`, behind the key when there is one), with
prometheus-client on a registry of the app's own (two apps in one process, as in tests or
several `wrap` copies, never share counts).

Per request: how it was answered (path, status), its tokens (completion, upstream prompt and
completion), upstream calls, cache hits, and seconds in total / waiting on the upstream / scoring
values; per answer, the KL to the base it paid (to watch a beta `vas-proxy calibrate` chose);
errors by code, mid-stream ones included; generations in flight. Paths are the routes we serve,
anything else is "other", so a scanner cannot blow up the label set.
"""

from __future__ import annotations

import json
import time

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)

from ..usage import Usage

PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/ready",
         "/metrics")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# nats: 1.84 is Best-of-16's bound, the budget the README calibrates for
KL_BUCKETS = (0.01, 0.1, 0.25, 0.5, 1, 1.84, 2.5, 5, 10, 25, 50)


class Metrics:
    def __init__(self, in_flight=lambda: 0):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("vas_proxy_requests", "HTTP requests answered",
                                ["path", "status"], registry=r)
        self.errors = Counter("vas_proxy_errors", "errors answered, by code (mid-stream too)",
                              ["code"], registry=r)
        self.tokens = Counter("vas_proxy_tokens", "tokens: completion (to clients), "
                              "upstream_prompt and upstream_completion (billed)", ["kind"],
                              registry=r)
        self.upstream_calls = Counter("vas_proxy_upstream_calls", "billed upstream calls",
                                      registry=r)
        self.cache_hits = Counter("vas_proxy_cache_hits", "upstream answers replayed from the "
                                  "response cache", registry=r)
        self.seconds = Histogram("vas_proxy_request_seconds", "seconds per generation request: "
                                 "total, upstream (waiting on it) and scoring (value models)",
                                 ["part"], buckets=BUCKETS, registry=r)
        self.kl_nats = Histogram("vas_proxy_kl_nats", "KL to the base paid per answer (nats), "
                                 "by kind: estimate (guided) or bound (Best-of-N)", ["kind"],
                                 buckets=KL_BUCKETS, registry=r)
        gauge = Gauge("vas_proxy_generations_in_flight", "generations admitted and running",
                      registry=r)
        gauge.set_function(in_flight)

    def answered(self, path: str, status: int) -> None:
        self.requests.labels(path if path in PATHS else "other", str(status)).inc()

    def error(self, code: str | None) -> None:
        self.errors.labels(code or "unknown").inc()

    def usage(self, u: Usage, t0: float) -> None:
        """A generation request finished (started at perf_counter `t0`)."""
        self.tokens.labels("completion").inc(u.completion_tokens)
        self.tokens.labels("upstream_prompt").inc(u.upstream_prompt_tokens)
        self.tokens.labels("upstream_completion").inc(u.upstream_completion_tokens)
        self.upstream_calls.inc(u.upstream_calls)
        self.cache_hits.inc(u.cache_hits)
        self.seconds.labels("total").observe(time.perf_counter() - t0)
        self.seconds.labels("upstream").observe(u.upstream_seconds)
        self.seconds.labels("scoring").observe(u.scoring_seconds)

    def kl(self, kls: list[dict]) -> None:
        """Each choice's `vas_kl` (formats.kl_field); a choice with no KL is not counted."""
        for k in kls:
            if k["nats"] is not None:
                self.kl_nats.labels(k["kind"]).observe(k["nats"])

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Measure:
    """ASGI layer counting every answer by path and status (the key check's 401s included)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        status, body = 0, b""

        async def counted(message):
            nonlocal status, body
            if message["type"] == "http.response.start":
                status = message["status"]
                self.metrics.answered(scope["path"], status)
            elif message["type"] == "http.response.body" and status >= 400:
                body += message.get("body", b"")  # an error envelope: small
                if not message.get("more_body"):
                    self.metrics.error(_code(body))
            await send(message)

        await self.app(scope, receive, counted)


def _code(body: bytes) -> str | None:
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
