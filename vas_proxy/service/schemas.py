"""Request bodies of the OpenAI-compatible endpoints (the fields we honour, validated), and their
translation into engine requests (`generation_requests`).

Unknown top-level fields are accepted (OpenAI clients send many) and logged at debug level by
the serving. The `vas` object is strict: its fields are checked by the engine's own rules
(`guidance.check_guidance`, `bestof_modes.BEST_OF_RULES` and `check_together`), so the wire, the
CLI flags, `wrap` and the eval cannot disagree, and a failure keeps the rule's message, param and
code.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat,
                      StrictInt, ValidationInfo, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from ..bestof_modes import BEST_OF_FIELDS, BEST_OF_RULES, check_together
from ..defaults import CHAT_MAX_TOKENS, COMPLETION_MAX_TOKENS, MAX_N
from ..engine import GenerationRequest
from ..guidance import GUIDANCE_RULES, Guidance, check_guidance, check_known
from ..errors import ConfigError
from .errors import vas_option_error
from .unsupported import check_message, check_unsupported

SEED_RANGE = 2**64  # seeds are taken modulo this: -1 is a seed like any other


def _unicode(v: str) -> str:
    """Only text that can be sent on: a lone surrogate ("\\ud800", legal in JSON) cannot be
    encoded as UTF-8 for the upstream."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"contains a lone surrogate ({v[e.start]!r} at {e.start}); send "
                         "valid Unicode text") from None
    return v


Text = Annotated[str, AfterValidator(_unicode)]


@contextmanager
def _rule():
    """Report a rule's ConfigError as this field's validation error."""
    try:
        yield
    except ConfigError as e:
        raise vas_option_error(e) from e


class VasOptions(BaseModel):
    """The body's `vas` object (docs/design.md §5): guidance overrides, or Best-of-N (plain,
    pruned or guided). Fields are checked in the order declared (the engine's rule order) and
    only when given: what a request leaves out comes from the server's defaults."""

    model_config = ConfigDict(extra="forbid")

    beta: float | None = None
    top_k: int | None = None
    speculate: int | None = None
    trace: bool | None = None
    weights: dict[str, float] | None = None
    best_of: int | None = None
    # The name of a reward the operator loaded. Any other JSON value is answered by the serving
    # as an unknown reward, with the loaded names: it alone knows them.
    reward: Any = None
    # Checked by the rules alone (pydantic would coerce "4" or 4.0 to 4)
    best_of_mode: Any = None
    prune_block: Any = None
    prune_keep: Any = None

    @model_validator(mode="before")
    @classmethod
    def _object(cls, data):
        if isinstance(data, VasOptions):
            return data
        if not isinstance(data, dict):
            raise PydanticCustomError("dict_type", "Input should be a valid dictionary")
        with _rule():
            check_known(data, also=BEST_OF_FIELDS)
        return data

    @field_validator(*GUIDANCE_RULES, mode="before")
    @classmethod
    def _guidance(cls, v, info: ValidationInfo):
        with _rule():
            check_guidance(info.field_name, v)
        return v

    @field_validator(*BEST_OF_RULES, mode="before")
    @classmethod
    def _best_of(cls, v, info: ValidationInfo):
        with _rule():
            return BEST_OF_RULES[info.field_name](v)

    @model_validator(mode="after")
    def _together(self):
        with _rule():
            check_together({k: getattr(self, k) for k in BEST_OF_FIELDS
                            if k in self.model_fields_set})
        return self

    def guidance(self) -> dict:
        """The guidance fields this request gave, for `Engine.resolve`."""
        return self.model_dump(include=set(GUIDANCE_RULES), exclude_unset=True)


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Text | list[dict[str, Any]] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, v):
        """Text parts only: an image or audio part would be dropped and the model would
        answer without it, so it is refused, as is a part whose text is not a string."""
        if not isinstance(v, list):
            return v
        for j, part in enumerate(v):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise PydanticCustomError(
                    "unsupported_part", "content part {j} has type {kind}: only text parts "
                    "are supported (the upstream is continued as text; the model would answer "
                    "without it)", {"j": j, "kind": repr(kind)})
            if not isinstance(part.get("text"), str):
                raise PydanticCustomError("text_part", "content part {j} needs a string `text`",
                                          {"j": j})
            _unicode(part["text"])
        return v

    def text(self) -> str:
        """Plain text of the message; the text parts of a multi-part content joined."""
        if isinstance(self.content, list):
            return "".join(p["text"] for p in self.content)
        return self.content or ""


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    # Strict types: `"n": true` or `"stream": "yes"` are mistakes to report, not to coerce
    model: Text = Field(min_length=1)
    temperature: StrictFloat = Field(1.0, ge=0.0, le=2.0)
    top_p: StrictFloat = Field(1.0, gt=0.0, le=1.0)
    stop: Text | list[Text] | None = None
    seed: StrictInt | None = Field(None, ge=-2**63, lt=SEED_RANGE)
    n: StrictInt = Field(1, ge=1, le=MAX_N)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    vas: VasOptions | None = None

    @model_validator(mode="after")
    def _meaningful_extras(self):
        """An undeclared field that would change the answer is refused (`unsupported`)."""
        with _rule():
            check_unsupported(self.model_extra or {})
        return self

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if v is None:
            return []
        v = [v] if isinstance(v, str) else v
        if len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return [s for s in v if s]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def unknown_fields(self) -> list[str]:
        return sorted(self.model_extra or {})

    def guidance_override(self) -> dict | None:
        """The `vas` guidance fields given, for `Engine.resolve` (None: the server's)."""
        return self.vas.guidance() if self.vas is not None else None

    def token_limit(self) -> int:
        raise NotImplementedError

    def prompt_chars(self) -> int:
        raise NotImplementedError

    def generation_count(self) -> int:
        """Generations this request runs at once: n choices, each Best-of-N when asked."""
        best_of = self.vas.best_of if self.vas is not None else None
        return self.n * (best_of or 1)

    def generation_requests(self, prompt, guidance: Guidance,
                            model: str | None) -> list[GenerationRequest]:
        """One engine request per choice, on `prompt` (a `prompting.Prepared`: its text and
        what the upstream continues). Choice i is seeded `seed + i`: reproducible, yet the n
        choices differ."""
        return [GenerationRequest(prompt=prompt.text, upstream_prompt=prompt.upstream,
                                  max_tokens=self.token_limit(),
                                  temperature=self.temperature, top_p=self.top_p,
                                  stop=self.stop,
                                  seed=(None if self.seed is None
                                        else (self.seed + i) % SEED_RANGE),
                                  guidance=guidance, model=model)
                for i in range(self.n)]


class CompletionRequest(_Common):
    prompt: Text | list[Text]
    max_tokens: StrictInt = Field(COMPLETION_MAX_TOKENS, ge=1)
    logprobs: StrictInt | None = Field(None, ge=0, le=20)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("send one prompt per request (a list of exactly one string)")
            return v[0]
        return v

    def token_limit(self) -> int:
        return self.max_tokens

    def prompt_chars(self) -> int:
        return len(self.prompt)

    def reward_prompt(self) -> str:
        """What a Best-of-N reward scores the answers against: the prompt."""
        return self.prompt


class ChatCompletionRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _plain_messages(self):
        with _rule():
            for i, m in enumerate(self.messages):
                check_message(m.model_extra or {}, i)
        return self

    def token_limit(self) -> int:
        return self.max_completion_tokens or self.max_tokens or CHAT_MAX_TOKENS

    def prompt_chars(self) -> int:
        return sum(len(m.text()) for m in self.messages)

    def chat_messages(self) -> list[dict]:
        """The messages as {"role", "content"} with plain-text content, for the template."""
        return [{"role": m.role, "content": m.text()} for m in self.messages]

    def reward_prompt(self) -> str:
        """What a Best-of-N reward scores the answers against: the last user message (the last
        message when there is none)."""
        msgs = self.chat_messages()
        users = [m["content"] for m in msgs if m["role"] == "user"]
        return users[-1] if users else msgs[-1]["content"]
