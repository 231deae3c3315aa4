"""How an upstream continues a partial answer: the three continuation strategies
(docs/design.md §2.11) and the request each one sends.

- "completions": raw `/v1/completions` on text, the chat template applied locally. The answer
  so far is re-sent as text, which the upstream tokenises again (drift, §2.11).
- "tokens": `/v1/completions` with the prompt as a list of token ids and the chosen tokens'
  own ids appended: exactly the path the upstream would have taken (llama.cpp's server).
- "chat": `/v1/chat/completions` with the answer so far as a trailing assistant message,
  marked in the provider's way (`Profile.chat_prefill`), so the provider applies its own
  template: the only way into hosted chat models whose template is not published.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

STRATEGIES = ("completions", "tokens", "chat")

# How a provider's chat endpoint is told that the trailing assistant message is a partial answer
# to continue, not a finished turn (their public docs; docs/design.md §2.11):
CHAT_PREFILL = {
    # vLLM, SGLang (and llama.cpp's server): request fields
    "continue_final_message": ({"continue_final_message": True,
                                "add_generation_prompt": False}, {}),
    # DeepSeek (beta base URL) and Mistral: a field on the message itself
    "prefix": ({}, {"prefix": True}),
    # Qwen on DashScope's compatible mode
    "partial": ({}, {"partial": True}),
    # llama.cpp's server continues a trailing assistant message as it is
    "trailing": ({}, {}),
}


@dataclass(frozen=True)
class ChatPrompt:
    """A conversation continued through the chat endpoint: `messages` end with a user (or
    system/tool) turn; `prefill` is an assistant answer the client had already begun."""

    messages: tuple[dict, ...]
    prefill: str = ""


@dataclass(frozen=True)
class TokenPrompt:
    """A prompt as the upstream's own token ids (`text`: the same prompt as text, for logs and
    for the value models)."""

    ids: tuple[int, ...]
    text: str = ""


Prompt = str | TokenPrompt | ChatPrompt


def strategy_of(prompt: Prompt) -> str:
    if isinstance(prompt, ChatPrompt):
        return "chat"
    return "tokens" if isinstance(prompt, TokenPrompt) else "completions"


def continued(prompt: Prompt, text: str, ids: Sequence[int]) -> str | list[int] | ChatPrompt:
    """What to send for `prompt` followed by the answer so far (`text`, or its token `ids`)."""
    if isinstance(prompt, TokenPrompt):
        return [*prompt.ids, *ids]
    if isinstance(prompt, ChatPrompt):
        return ChatPrompt(prompt.messages, prompt.prefill + text)
    return prompt + text


def chat_body(prompt: ChatPrompt, prefill_style: str, k: int) -> dict:
    """The `/v1/chat/completions` fields of a continued chat (logprobs in the chat shape: a
    list per position, with bytes where the provider gives them)."""
    messages = [dict(m) for m in prompt.messages]
    fields: dict = {}
    if prompt.prefill:
        body_fields, message_fields = CHAT_PREFILL[prefill_style]
        messages.append({"role": "assistant", "content": prompt.prefill, **message_fields})
        fields.update(body_fields)
    fields["messages"] = messages
    if k:
        fields.update(logprobs=True, top_logprobs=k)
    return fields


def sent_text(prompt: str | list[int] | ChatPrompt) -> str:
    """What was sent, as a string the usage compares by prefix to count what a prefix cache
    could serve: the text, or the token ids spelt "ids:1,2,3," (an id prefix is then a string
    prefix, and never one of a text); chats are not compared ("")."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "ids:" + "".join(f"{i}," for i in prompt)
    return ""
