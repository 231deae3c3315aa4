"""`vas_proxy.wrap(client)`: an openai client of the same type whose requests run the guided
engine in-process (docs/design.md §2, §5). Not a monkey-patch: `client.copy(http_client=...)`
with a transport that answers through the very app `vas-proxy serve` runs. The copy owns what
it started (the sync engine thread, the upstream connections): its `close()` releases them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import httpx2 as httpx

from . import defaults
from .engine import Engine
from .guidance import Guidance
from .options import default_value_specs
from .runtime import Runtime, load_rewards, load_values
from .service.app import create_app
from .service.transport import AsyncAppTransport, SyncAppTransport
from .templates import ChatTemplate, load_template
from .upstream.client import UpstreamClient
from .values import ValueFunction


def wrap(client, values: Mapping[str, str | ValueFunction] | None = None,
         beta: float = defaults.BETA, top_k: int = defaults.TOP_K,
         speculate: int | None = defaults.SPECULATE, cache_dir: str | None = None, *,
         use_cache: bool = True,
         provider: str = defaults.PROVIDER, chat_template: str | ChatTemplate | None = None,
         device: str = defaults.DEVICE, dtype: str | None = None,
         rewards: Mapping[str, str | Callable] | None = None,
         continuation: str = defaults.CONTINUATION):
    """Return a guided copy of `client` (`openai.OpenAI` or `openai.AsyncOpenAI`).

    The copy sends to the same upstream (its base_url and api_key) but every
    `completions.create` / `chat.completions.create` is VAS-guided; per call, `extra_body=
    {"vas": {...}}` overrides beta, top_k, weights, speculate, trace. `values` maps names to
    value SPECs (or loaded value functions); default: the bundled demo value model. Chat goes
    through the provider's chat prefill where its profile has one (llama-server, vllm,
    sglang, deepseek, mistral, dashscope: no template needed), else through /v1/completions
    with `chat_template` (a spec for `templates.load_template` or a ChatTemplate);
    `continuation` forces one strategy (prompting.py). `rewards` maps names to reward SPECs (or
    callables `f(prompts, responses) -> list[float]`) that `extra_body={"vas": {"best_of": N,
    "reward": NAME}}` may name for Best-of-N (`"best_of_mode"`: "plain", "pruned" by the value
    models, or "guided"); value models on one backbone share it.
    Close the copy (`close()`, `with`, or `await close()` / `async with` for AsyncOpenAI) to
    release its engine thread and upstream sockets; `client` itself is left as it was.
    """
    import openai

    if not isinstance(client, (openai.OpenAI, openai.AsyncOpenAI)):
        raise TypeError(f"wrap expects openai.OpenAI or openai.AsyncOpenAI, got {type(client)!r}")
    specs = dict(values) if values is not None else default_value_specs()
    loaded = load_values(specs, device=device, dtype=dtype, verbose=False)
    reward_fns = load_rewards(rewards or {}, device=device, verbose=False)
    template = load_template(chat_template) if isinstance(chat_template, str) else chat_template
    base_url = str(client.base_url).rstrip("/")
    upstream = UpstreamClient(base_url, "", api_key=client.api_key or None, profile=provider,
                              timeout=_timeout(client.timeout), cache_dir=cache_dir,
                              use_cache=use_cache)
    engine = Engine(upstream, loaded, defaults=Guidance(beta=beta, top_k=top_k,
                                                        speculate=speculate),
                    eos_texts=template.stop_strings if template else [])
    app = create_app(Runtime(engine, template, model="", base_url=base_url,
                             rewards=reward_fns, continuation=continuation),
                     passthrough_models=True)
    prefix = urlsplit(base_url).path
    if isinstance(client, openai.AsyncOpenAI):
        http = httpx.AsyncClient(transport=AsyncAppTransport(app, prefix, upstream.aclose),
                                 timeout=client.timeout)
    else:
        http = httpx.Client(transport=SyncAppTransport(app, prefix, upstream.aclose),
                            timeout=client.timeout)
    # The engine's upstream client already retries (tenacity); SDK retries on top would repeat
    # whole guided generations.
    return client.copy(http_client=http, max_retries=0)


def _timeout(t) -> float:
    if isinstance(t, (int, float)):
        return float(t)
    return float(getattr(t, "read", None) or defaults.WRAP_TIMEOUT)
