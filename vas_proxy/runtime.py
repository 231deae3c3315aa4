"""Build a ready Engine from user options: the embedded upstream when none is given, the value
models, the chat template and the end-of-turn markers. Shared by `generate`, `serve`, `demo`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from . import progress
from .assets import DATA_DIR, smollm2_gguf
from .engine import Engine, Guidance
from .errors import ConfigError
from .templates import ChatTemplate, from_gguf, load_template
from .upstream.client import UpstreamClient
from .upstream.local import LocalUpstream
from .values import ValueFunction
from .values.loader import backbone_of, load_value

HEURISTIC_VALUE = "py:vas_proxy.values.heuristics:positivity"


def default_value_specs() -> dict[str, str]:
    """The bundled demo value model when it is installed, else the documented heuristic."""
    if (DATA_DIR / "values" / "positivity" / "vas_value.json").is_file():
        return {"positivity": "bundled:positivity"}
    return {"positivity": HEURISTIC_VALUE}


def parse_value_specs(items: Sequence[str] | None) -> dict[str, str]:
    """`NAME=SPEC` items → {name: spec}; none → the defaults."""
    if not items:
        return default_value_specs()
    out: dict[str, str] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise ConfigError(f"--value expects NAME=SPEC, got {item!r}")
        if name in out:
            raise ConfigError(f"value model name {name!r} given twice")
        out[name] = spec
    return out


_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def parse_reward_specs(items: Sequence[str] | None) -> dict[str, str]:
    """`NAME=SPEC` or bare `SPEC` items → {name: spec} (a bare spec is its own name: `vader`).

    A `=` only names when what precedes it is a plain name, so `hf:dir?pair=1` stays a spec.
    """
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, spec = item.partition("=")
        if not (sep and _NAME.fullmatch(name)):
            name, spec = item, item
        if not spec:
            raise ConfigError(f"--reward expects NAME=SPEC or SPEC, got {item!r}")
        if name in out:
            raise ConfigError(f"reward name {name!r} given twice")
        out[name] = spec
    return out


def load_rewards(specs: Mapping[str, str | Callable], *, device: str = "cpu") -> dict:
    """{name: SPEC or callable} → {name: Reward}; the operator's rewards (never a request's:
    DESIGN §5). Callables `f(prompts, responses) -> list[float]` are kept as they are."""
    from .rewards import load_reward

    return {name: load_reward(spec, device=device) if isinstance(spec, str) else spec
            for name, spec in specs.items()}


@dataclass
class Options:
    upstream: str | None = None
    model: str | None = None
    api_key: str | None = None
    provider: str = "llamacpp"
    values: dict[str, str] = field(default_factory=default_value_specs)
    rewards: dict[str, str] = field(default_factory=dict)  # for vas.best_of: {name: SPEC}
    guidance: Guidance = field(default_factory=Guidance)
    chat_template: str | None = None  # None: the GGUF's own for the embedded upstream, else raw
    device: str = "cpu"
    dtype: str | None = None
    timeout: float = 60.0
    cache_dir: str | None = None  # None: the user cache directory
    use_cache: bool = True
    verbose: bool = True


@dataclass
class Runtime:
    engine: Engine
    template: ChatTemplate | None
    model: str
    base_url: str
    rewards: dict = field(default_factory=dict)  # {name: Reward} that vas.best_of may name

    def render_prompt(self, prompt: str, raw: bool = False) -> str:
        if raw or self.template is None:
            return prompt
        return self.template.render([{"role": "user", "content": prompt}])

    def render_messages(self, messages: list[dict]) -> str:
        """Chat → raw continuation prompt. A trailing assistant message is a partial answer to
        continue (prefill), so it is appended after the generation prompt, unterminated."""
        if self.template is None:
            raise ConfigError("chat needs a chat template for this upstream: start with "
                              "--chat-template (or pass chat_template= to wrap)")
        if messages and messages[-1]["role"] == "assistant":
            return self.template.render(messages[:-1]) + messages[-1]["content"]
        return self.template.render(messages)


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
        from .values.checkpoint import BackbonePool

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
                                   pool=pool if shared else None)
    return out


@contextlib.asynccontextmanager
async def open_runtime(opts: Options) -> AsyncIterator[Runtime]:
    """Start what `opts` needs (embedded upstream, value models) and stop it all on exit."""
    with contextlib.ExitStack() as stack:
        base_url, model = opts.upstream, opts.model
        template = load_template(opts.chat_template) if opts.chat_template else None
        if base_url is None:
            local = LocalUpstream()
            with progress.step("starting the embedded SmolLM2 upstream", enabled=opts.verbose):
                stack.enter_context(local)
            base_url, model = local.base_url, model or local.model
            template = template or from_gguf(str(smollm2_gguf()))
        values = load_values(opts.values, device=opts.device, dtype=opts.dtype,
                             verbose=opts.verbose)
        rewards = load_rewards(opts.rewards, device=opts.device)
        client = UpstreamClient(base_url, model or "default", api_key=opts.api_key,
                                profile=opts.provider, timeout=opts.timeout,
                                cache_dir=opts.cache_dir, use_cache=opts.use_cache)
        try:
            if model is None:  # ask the upstream which model it serves
                models = await client.models()
                if not models:
                    raise ConfigError(f"upstream {base_url} lists no model; pass --model")
                client.model = model = models[0]
            eos = template.stop_strings if template else []
            engine = Engine(client, values, defaults=opts.guidance, eos_texts=eos)
            yield Runtime(engine, template, model, base_url, rewards)
        finally:
            await client.aclose()
