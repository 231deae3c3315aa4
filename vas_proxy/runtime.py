"""Build a ready Engine from user options: the embedded upstream when none is given, the value
models, the chat template and the end-of-turn markers. Shared by `generate`, `serve`, `demo`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from . import progress
from .assets import smollm2_gguf
from .engine import Engine
from .errors import ConfigError
from .options import CacheOptions, GuidanceOptions, UpstreamOptions, ValueLoadOptions
from .prompting import Prepared, PromptBuilder
from .redact import redact_url
from .templates import ChatTemplate, from_gguf, load_template, from_props
from .upstream.client import UpstreamClient
from .upstream.local import LocalUpstream, default_server
from .values import ValueFunction
from .values.loader import backbone_of, load_value

def load_rewards(specs: Mapping[str, str | Callable], *, device: str = "cpu",
                 verbose: bool = True) -> dict:
    """{name: SPEC or callable} → {name: Reward}; the operator's rewards (never a request's:
    docs/design.md §5). Callables `f(prompts, responses) -> list[float]` are kept as they
    are. Not `verbose`: transformers prints nothing while `hf:` classifiers load."""
    from .rewards import load_reward

    return {name: load_reward(spec, device=device, quiet=not verbose) if isinstance(spec, str)
            else spec for name, spec in specs.items()}


@dataclass
class Options:
    """What `open_runtime` starts: the option groups of `generate` and `serve` (the same
    dataclasses their flags are parsed into, vas_proxy/options), so a default lives only there."""

    upstream: UpstreamOptions = field(default_factory=UpstreamOptions)
    guidance: GuidanceOptions = field(default_factory=GuidanceOptions)  # and the value models
    cache: CacheOptions = field(default_factory=CacheOptions)
    loading: ValueLoadOptions = field(default_factory=ValueLoadOptions)
    rewards: dict[str, str] = field(default_factory=dict)  # for vas.best_of: {name: SPEC}
    verbose: bool = True


@dataclass
class Runtime:
    engine: Engine
    template: ChatTemplate | None
    model: str
    base_url: str
    rewards: dict = field(default_factory=dict)  # {name: Reward} that vas.best_of may name
    continuation: str = "auto"

    def __post_init__(self):
        # Shown in /health and logs, so never with the URL's credentials
        self.base_url = redact_url(self.base_url)
        self.prompts = PromptBuilder(self.engine.upstream, self.template, self.continuation)

    async def prepare_prompt(self, prompt: str, raw: bool = False) -> Prepared:
        """The CLI's PROMPT: a user message (raw: the text as it is)."""
        return await self.prompts.user(prompt, raw)

    async def prepare_text(self, prompt: str) -> Prepared:
        """A /v1/completions prompt: the text as it is."""
        return await self.prompts.text(prompt)

    async def prepare_messages(self, messages: list[dict]) -> Prepared:
        """A chat; a trailing assistant message is a partial answer to continue (prefill)."""
        return await self.prompts.chat(messages)

    async def prepare_item(self, item) -> Prepared:
        """A prompts file's item (`train.prompts.PromptItem`) as `serve` would continue it:
        its messages, else its rendered text; what eval and calibrate's check generate from."""
        if item.messages is not None:
            return await self.prepare_messages(list(item.messages))
        return await self.prepare_text(item.upstream)

    def render_prompt(self, prompt: str) -> str:
        """A prompt as text with the chat template applied (the value models' and the
        rewards' view; train and eval send it as text)."""
        if self.template is None:
            return prompt
        return self.template.render([{"role": "user", "content": prompt}])


def load_values(specs: Mapping[str, str | ValueFunction], *, device: str = "cpu",
                dtype: str | None = None, verbose: bool = True) -> dict[str, ValueFunction]:
    """Load the value models. Checkpoints on the same backbone share one copy of it in memory
    (each keeps its own LoRA adapter and head); one alone on its backbone gets it merged, the
    faster path."""
    from collections import Counter

    backbones = {name: backbone_of(spec) for name, spec in specs.items()
                 if isinstance(spec, str)}
    uses = Counter(b for b in backbones.values() if b is not None)
    pool = None
    if any(n > 1 for n in uses.values()):
        from .values.store import BackbonePool

        pool = BackbonePool()
    out = {}
    for name, spec in specs.items():
        if not isinstance(spec, str):  # already a loaded ValueFunction
            out[name] = spec
            continue
        shared = uses.get(backbones[name], 0) > 1
        with progress.step(f"loading value model {name} ({spec})"
                           + (" on a shared backbone" if shared else ""),
                           enabled=verbose and not spec.startswith("py:")):
            out[name] = load_value(spec, name=name, device=device, dtype=dtype,
                                   pool=pool if shared else None, quiet=not verbose)
    return out


@contextlib.asynccontextmanager
async def open_runtime(opts: Options) -> AsyncIterator[Runtime]:
    """Start what `opts` needs (embedded upstream, value models) and stop it all on exit."""
    up, loading, cache = opts.upstream, opts.loading, opts.cache
    with contextlib.ExitStack() as stack:
        base_url, model = up.url, up.model
        # None: the GGUF's own for the embedded upstream, the upstream's own where it says
        # (llama.cpp's server: /props), else raw prompts
        template = load_template(up.chat_template) if up.chat_template else None
        provider = up.provider
        if up.adapter and base_url is not None:
            raise ConfigError("--adapter applies to the embedded upstream only; a remote "
                              "upstream serves its own models")
        if base_url is None:
            local = LocalUpstream(server=up.embedded or default_server(), lora=up.adapter)
            with progress.step(f"starting the embedded SmolLM2 upstream ({local.server})",
                               enabled=opts.verbose):
                stack.enter_context(local)
            base_url, model = local.base_url, model or local.model
            provider = local.profile
            template = template or from_gguf(str(smollm2_gguf()))
        values = load_values(opts.guidance.values, device=loading.device, dtype=loading.dtype,
                             verbose=opts.verbose)
        rewards = load_rewards(opts.rewards, device=loading.device, verbose=opts.verbose)
        client = UpstreamClient(base_url, model or "default", api_key=up.api_key,
                                profile=provider, timeout=up.timeout,
                                cache_dir=cache.cache_dir, use_cache=cache.use_cache,
                                cache_ttl=cache.cache_ttl)
        try:
            if model is None:  # ask the upstream which model it serves
                models = await client.models()
                if not models:
                    raise ConfigError(f"upstream {redact_url(base_url)} lists no model; "
                                      "pass --model")
                client.model = model = models[0]
            if template is None and client.profile.tokenizer_routes:
                template = from_props(await client.props())
            eos = template.stop_strings if template else []
            engine = Engine(client, values, defaults=opts.guidance.engine_defaults(),
                            eos_texts=eos)
            yield Runtime(engine, template, model, base_url, rewards, up.continuation)
        finally:
            await client.aclose()
