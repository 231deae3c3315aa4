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
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationInfo, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from ..bestof_modes import BEST_OF_FIELDS, BEST_OF_RULES, check_together
from ..defaults import CHAT_MAX_TOKENS, COMPLETION_MAX_TOKENS, MAX_N
from ..engine import GenerationRequest
from ..guidance import GUIDANCE_RULES, Guidance, check_guidance, check_known
from ..errors import ConfigError
from .errors import vas_option_error


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
    include_usage: bool = False


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """Plain text of the message; text parts of a multi-part content are joined."""
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    vas: VasOptions | None = None

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

    def generation_requests(self, prompt: str, guidance: Guidance,
                            model: str | None) -> list[GenerationRequest]:
        """One engine request per choice, on `prompt` (the exact upstream text). Choice i is
        seeded `seed + i`: reproducible, yet the n choices differ."""
        return [GenerationRequest(prompt=prompt, max_tokens=self.token_limit(),
                                  temperature=self.temperature, top_p=self.top_p,
                                  stop=self.stop,
                                  seed=None if self.seed is None else self.seed + i,
                                  guidance=guidance, model=model)
                for i in range(self.n)]


class CompletionRequest(_Common):
    prompt: str | list[str]
    max_tokens: int = Field(COMPLETION_MAX_TOKENS, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False

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

    def reward_prompt(self) -> str:
        """What a Best-of-N reward scores the answers against: the prompt."""
        return self.prompt


class ChatCompletionRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def token_limit(self) -> int:
        return self.max_completion_tokens or self.max_tokens or CHAT_MAX_TOKENS

    def chat_messages(self) -> list[dict]:
        """The messages as {"role", "content"} with plain-text content, for the template."""
        return [{"role": m.role, "content": m.text()} for m in self.messages]

    def reward_prompt(self) -> str:
        """What a Best-of-N reward scores the answers against: the last user message (the last
        message when there is none)."""
        msgs = self.chat_messages()
        users = [m["content"] for m in msgs if m["role"] == "user"]
        return users[-1] if users else msgs[-1]["content"]
