"""A request's prompt as the engine continues it: text for the value models, and what the
upstream is sent, by the continuation strategy (docs/design.md §2.11; the strategies are in
upstream/continuation.py). Shared by `generate`, `serve` and `wrap`.

`auto` takes the first of the profile's strategies that applies: "tokens" where the upstream
tokenises for us, in its own template when none is known here (llama.cpp's server; vLLM
with `--continuation tokens`), "chat" where its chat endpoint continues a partial
answer, "completions" where a chat template is known locally (or read from the upstream).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .templates import CHATML, ChatTemplate
from .upstream.client import UpstreamClient
from .upstream.continuation import STRATEGIES, ChatPrompt, TokenPrompt

AUTO = "auto"
_VIEW = ChatTemplate("chatml (the value models' view)", CHATML)


@dataclass
class Prepared:
    """`text`: the prompt as the value models (and logs) read it; `upstream`: what the engine
    continues upstream (None: `text` itself, through /v1/completions)."""

    text: str
    upstream: TokenPrompt | ChatPrompt | None = None

    @property
    def strategy(self) -> str:
        if isinstance(self.upstream, TokenPrompt):
            return "tokens"
        return "chat" if isinstance(self.upstream, ChatPrompt) else "completions"


class PromptBuilder:
    """Prepares prompts for one upstream, its chat template (None: unknown) and a strategy
    (`auto` or one of STRATEGIES)."""

    def __init__(self, upstream: UpstreamClient, template: ChatTemplate | None,
                 strategy: str = AUTO):
        if strategy != AUTO and strategy not in STRATEGIES:
            raise ConfigError(f"unknown continuation {strategy!r}: use auto, "
                              f"{', '.join(STRATEGIES)}", param="continuation")
        self.upstream, self.template, self.strategy = upstream, template, strategy
        profile = upstream.profile
        if strategy != AUTO and strategy not in profile.strategies:
            raise ConfigError(
                f"provider {profile.name!r} cannot continue through {strategy!r}; it can: "
                f"{', '.join(profile.strategies) or 'nothing'}", param="continuation")

    def _applies(self, s: str, chat: bool) -> bool:
        p = self.upstream.profile
        if s == "tokens":
            return p.tokenizer_routes  # a chat in the upstream's own template, or ours
        if s == "chat":
            return chat and p.chat_prefill is not None
        return not chat or self.template is not None

    def choose(self, chat: bool) -> str:
        """The strategy for a chat (or a plain text prompt), or a ConfigError saying what
        would work."""
        order = self.upstream.profile.strategies if self.strategy == AUTO else (self.strategy,)
        for s in order:
            if self._applies(s, chat):
                return s
        name = self.upstream.profile.name
        if chat:
            raise ConfigError(
                f"chat needs a chat template for provider {name!r}, which continues answers "
                "only through raw completions: pass --chat-template (chatml, a .gguf, a "
                "tokenizer dir or a Jinja file; chat_template= for wrap), or use a provider "
                "whose chat endpoint continues a partial answer (--provider llama-server, "
                "vllm, sglang, deepseek, mistral, dashscope)", param="messages")
        raise ConfigError(f"provider {name!r} cannot continue a text prompt through "
                          f"{self.strategy!r}; use --continuation completions", param="prompt")

    async def chat(self, messages: list[dict]) -> Prepared:
        """A conversation; a trailing assistant message is a partial answer to continue."""
        prefill = ""
        if messages and messages[-1]["role"] == "assistant":
            messages, prefill = messages[:-1], messages[-1]["content"]
        s = self.choose(chat=True)
        if s == "chat":
            view = (self.template or _VIEW).render(messages) + prefill
            return Prepared(view, ChatPrompt(tuple(messages), prefill))
        if s == "tokens" and self.template is None:  # the upstream's own template
            ids = await self.upstream.tokenizer.chat_ids(list(messages), prefill)
            view = _VIEW.render(messages) + prefill
            return Prepared(view, TokenPrompt(tuple(ids), view))
        text = self.template.render(messages) + prefill
        if s == "tokens":
            return Prepared(text, TokenPrompt(tuple(await self.upstream.tokenize(text)), text))
        return Prepared(text)

    async def text(self, prompt: str) -> Prepared:
        """A raw prompt, sent as it is (as text, or as the upstream's tokens of it)."""
        if self.choose(chat=False) == "tokens":
            return Prepared(prompt, TokenPrompt(tuple(await self.upstream.tokenize(prompt)),
                                                prompt))
        return Prepared(prompt)

    async def user(self, prompt: str, raw: bool = False) -> Prepared:
        """The CLI's PROMPT: a user message where a template or a chat route can take it,
        else (or with `raw`) the text as it is."""
        if raw:
            return await self.text(prompt)
        try:
            self.choose(chat=True)
        except ConfigError:
            return await self.text(prompt)  # no way to chat: raw, as before
        return await self.chat([{"role": "user", "content": prompt}])
