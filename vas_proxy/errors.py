"""Typed errors. Every user-facing failure is a `VasError` whose message is one actionable line.

The CLI prints `error: <message>` and exits non-zero without a traceback for these; the service
(issue 4) maps them to OpenAI-shaped error envelopes through `http_status` and `code`.
"""

from __future__ import annotations

from .redact import redact


class VasError(Exception):
    """Base class: a failure the user can act on. `http_status`/`code` shape the HTTP error."""

    http_status = 500
    code = "vas_error"
    type = "server_error"

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class ConfigError(VasError):
    """Bad user input: a spec, a flag, a request field."""

    http_status = 400
    code = "invalid_request"
    type = "invalid_request_error"


class ValueSpecError(ConfigError):
    """A value SPEC that cannot be loaded (unknown form, missing module, bad checkpoint)."""

    code = "invalid_value_spec"


class CheckpointError(ValueSpecError):
    """A value-model checkpoint directory that is missing files or does not match its config."""

    code = "invalid_checkpoint"


class UpstreamError(VasError):
    """Anything that went wrong talking to the upstream LLM endpoint."""

    http_status = 502
    code = "upstream_error"
    type = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamUnreachable):
    http_status = 504
    code = "upstream_timeout"


class UpstreamHTTPError(UpstreamError):
    """The upstream answered with a non-2xx status. Keeps the status and the upstream's message."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None,
                 error_code: str | None = None):
        # The upstream's text may echo our request's Authorization header: never pass it on
        message = redact(message)
        super().__init__(f"upstream answered HTTP {status}: {message}")
        self.status = status
        self.upstream_message = message
        self.retry_after = retry_after
        self.error_code = error_code
        # Client errors of ours that the upstream caught stay client errors.
        if status in (400, 404, 413, 422):
            self.http_status = 400 if status != 404 else 404
        elif status == 429:  # the client should slow down too (with the upstream's Retry-After)
            self.http_status, self.type = 429, "rate_limit_error"


class ContextLengthError(UpstreamHTTPError):
    """The prompt (plus what we generated) no longer fits the upstream's context window."""

    code = "context_length_exceeded"
    type = "invalid_request_error"


class MalformedAnswerError(UpstreamError):
    """The upstream answered 2xx with a body that is not the completions shape."""

    code = "upstream_malformed_answer"


class NoLogprobsError(UpstreamError):
    """The upstream answered without logprobs: VAS cannot re-weight what it cannot see."""

    code = "upstream_no_logprobs"


class TooFewCandidatesError(UpstreamError):
    """The upstream returned fewer top-k candidates than asked for."""

    code = "upstream_too_few_candidates"


class UnsupportedProviderError(ConfigError):
    """The provider profile cannot do what VAS needs (no logprobs, no partial-answer continuation)."""

    code = "unsupported_provider"
