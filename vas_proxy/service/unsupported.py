"""OpenAI request fields this service does not implement but that change the answer: a request
that uses one gets a 400 naming it, never a 200 that quietly ignored it (a client asking for
tools or a JSON schema would otherwise get plain text and fail late).

Each field is allowed at its neutral value (what sending nothing means), so clients that always
send, say, `presence_penalty: 0` or `tool_choice: "none"` keep working. Other unknown fields are
harmless metadata (`user`, `metadata`, `store`, ...) and are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..errors import ConfigError


class UnsupportedField(ConfigError):
    code = "unsupported_parameter"


def _empty(v) -> bool:
    return v is None or v == [] or v == {} or v == ""


def _zero(v) -> bool:
    return v is None or (not isinstance(v, bool) and v == 0)


def _none_choice(v) -> bool:
    return v is None or v == "none"


def _text_format(v) -> bool:
    return v is None or v == {"type": "text"}


_TOOLS = "tool and function calling are not supported: the model would answer in plain text"
_SAMPLING = ("it changes the sampling distribution, which VAS re-weights itself; leave it out "
             "(or at its neutral value)")

# field: (is it neutral?, why it is refused otherwise)
REFUSED: dict[str, tuple[Callable[[object], bool], str]] = {
    "tools": (_empty, _TOOLS),
    "tool_choice": (_none_choice, _TOOLS),
    "functions": (_empty, _TOOLS),
    "function_call": (_none_choice, _TOOLS),
    "response_format": (_text_format, "structured output (json_object, json_schema) is not "
                                      "supported: only {\"type\": \"text\"}"),
    "logit_bias": (_empty, _SAMPLING),
    "presence_penalty": (_zero, _SAMPLING),
    "frequency_penalty": (_zero, _SAMPLING),
    "repetition_penalty": (lambda v: v is None or v == 1, _SAMPLING),
    "min_p": (_zero, _SAMPLING),
    "top_k": (lambda v: v is None or v in (0, -1), _SAMPLING + "; VAS's own is vas.top_k"),
    "best_of": (lambda v: v is None or v == 1, "use vas.best_of with vas.reward: this "
                                               "service picks the best by a reward"),
    "echo": (lambda v: v is None or v is False, "echo of the prompt is not supported"),
    "suffix": (_empty, "insertion (suffix) is not supported"),
    "modalities": (lambda v: v is None or v == ["text"], "only text output is supported"),
    "audio": (_empty, "only text output is supported"),
    "guided_json": (_empty, "guided decoding is not supported"),
    "guided_regex": (_empty, "guided decoding is not supported"),
    "guided_choice": (_empty, "guided decoding is not supported"),
    "guided_grammar": (_empty, "guided decoding is not supported"),
}


def check_unsupported(extra: Mapping[str, object], where: str = "") -> None:
    """Raise UnsupportedField for the first field of `extra` (a body's undeclared fields)
    that would change the answer."""
    for name, value in extra.items():
        rule = REFUSED.get(name)
        if rule is not None and not rule[0](value):
            raise UnsupportedField(f"{where}{name} is not supported by vas-proxy: {rule[1]}",
                                   param=f"{where}{name}")


# In a chat message: an assistant's tool calls, or a tool's answer to one
MESSAGE_REFUSED = {"tool_calls": (_empty, _TOOLS), "function_call": (_empty, _TOOLS)}


def check_message(extra: Mapping[str, object], index: int) -> None:
    for name, value in extra.items():
        rule = MESSAGE_REFUSED.get(name)
        if rule is not None and not rule[0](value):
            raise UnsupportedField(f"messages[{index}].{name} is not supported by vas-proxy: "
                                   f"{rule[1]}", param=f"messages.{index}.{name}")
