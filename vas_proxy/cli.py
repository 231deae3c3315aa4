"""`vas-proxy` command line (DESIGN §5). User errors print one line on stderr and exit 1;
bad flags exit 2 (argparse); Ctrl-C exits 130. No traceback unless --debug."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import sys

from ._version import __version__
from .engine import GenerationRequest, Guidance
from .errors import ConfigError, VasError


def _guidance_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("upstream and guidance")
    g.add_argument("--upstream", metavar="URL",
                   help="OpenAI-compatible base URL ending in /v1 (default: start the embedded "
                        "SmolLM2 upstream)")
    g.add_argument("--model", metavar="NAME", help="upstream model (default: the first it lists)")
    g.add_argument("--provider", default="llamacpp",
                   help="provider profile: llamacpp, vllm, sglang, openai-completions, ... "
                        "(default: llamacpp)")
    g.add_argument("--value", action="append", metavar="NAME=SPEC",
                   help="value model: a checkpoint dir, bundled:NAME or py:module:function; "
                        "repeatable (default: the bundled demo value model)")
    g.add_argument("--beta", type=float, default=1.0, help="guidance strength (default 1.0)")
    g.add_argument("--top-k", type=int, default=20, help="candidates scored per step (default 20)")
    g.add_argument("--speculate", type=int, default=0,
                   help="draft tokens per upstream call (0: one token per call)")
    g.add_argument("--chat-template", metavar="SPEC",
                   help="chatml, a .gguf, a tokenizer dir or a Jinja file (default: the "
                        "embedded model's own; raw prompts for other upstreams)")
    g.add_argument("--cache-dir", metavar="DIR",
                   help="upstream response cache (default: $VAS_PROXY_CACHE_DIR or "
                        "~/.cache/vas-proxy); only seeded requests are cached")
    g.add_argument("--no-cache", action="store_true", help="never read or write the cache")
    g.add_argument("--device", default="cpu", help="value-model device: cpu, cuda, cuda:1 ...")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="value-model dtype (default float32 on CPU)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per upstream call")


def _reward_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reward", action="append", metavar="NAME=SPEC",
                   help="reward that requests may name for the Best-of-N baseline (vas.best_of, "
                        "vas.reward): vader, concise, plain, py:module:function or hf:PATH; "
                        "repeatable")


def _options(a: argparse.Namespace, api_key: str | None):
    from .runtime import Options, parse_reward_specs, parse_value_specs

    guidance = Guidance(beta=a.beta, top_k=a.top_k, speculate=a.speculate)
    guidance.validate()
    return Options(upstream=a.upstream, model=a.model, api_key=api_key, provider=a.provider,
                   values=parse_value_specs(a.value), guidance=guidance,
                   rewards=parse_reward_specs(getattr(a, "reward", None)),
                   chat_template=a.chat_template, device=a.device, dtype=a.dtype,
                   timeout=a.timeout, cache_dir=a.cache_dir, use_cache=not a.no_cache,
                   verbose=not getattr(a, "quiet", False))


async def _generate(a: argparse.Namespace) -> int:
    from .runtime import open_runtime

    key = a.api_key or os.environ.get("VAS_UPSTREAM_API_KEY")
    async with open_runtime(_options(a, key)) as rt:
        req = GenerationRequest(prompt=rt.render_prompt(a.prompt, raw=a.raw),
                                max_tokens=a.max_tokens, temperature=a.temperature,
                                top_p=a.top_p, stop=a.stop or [], seed=a.seed,
                                guidance=rt.engine.defaults)
        async for ev in rt.engine.stream(req):
            print(ev.text, end="", flush=True)
        print()
    return 0


async def _serve(a: argparse.Namespace) -> int:
    import ipaddress
    import logging

    import uvicorn

    from .runtime import open_runtime
    from .service.app import create_app

    key = a.api_key or os.environ.get("VAS_PROXY_API_KEY") or None
    try:
        loopback = a.host == "localhost" or ipaddress.ip_address(a.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not key:
        raise ConfigError(f"refusing to serve on non-loopback address {a.host} without an API key: "
                          "pass --api-key or set VAS_PROXY_API_KEY")
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    upstream_key = a.upstream_api_key or os.environ.get("VAS_UPSTREAM_API_KEY")
    async with open_runtime(_options(a, upstream_key)) as rt:
        app = create_app(rt, api_key=key)
        config = uvicorn.Config(app, host=a.host, port=a.port, log_level=a.log_level,
                                access_log=False)
        server = uvicorn.Server(config)
        print(f"vas-proxy serving {rt.model} (upstream {rt.base_url}) on "
              f"http://{a.host}:{a.port}/v1", file=sys.stderr, flush=True)
        await server.serve()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vas-proxy", description=(
        "Value Augmented Sampling for hosted LLMs: steer any OpenAI-compatible endpoint that "
        "returns top-k logprobs with a small local value model."))
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="print one guided answer to PROMPT")
    gen.add_argument("prompt")
    _guidance_args(gen)
    gen.add_argument("--api-key", help="upstream API key (or VAS_UPSTREAM_API_KEY)")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--stop", action="append", help="stop string (repeatable)")
    gen.add_argument("--seed", type=int, help="same seed, same text")
    gen.add_argument("--raw", action="store_true", help="send PROMPT as is, no chat template")
    gen.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    gen.set_defaults(func=_generate)

    srv = sub.add_parser("serve", help="OpenAI-compatible guided service")
    _guidance_args(srv)
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--api-key", help="require Authorization: Bearer KEY on /v1 "
                                       "(or VAS_PROXY_API_KEY); needed off loopback")
    srv.add_argument("--upstream-api-key", help="the upstream's key (or VAS_UPSTREAM_API_KEY)")
    srv.add_argument("--log-level", default="info",
                     choices=["debug", "info", "warning", "error"])
    _reward_args(srv)
    srv.set_defaults(func=_serve)

    # Subcommands owned by other modules register here (each adds its own parser).
    from .train.command import register as _register_train
    _register_train(sub)
    from .eval.command import register as _register_eval
    _register_eval(sub)
    from .demo import register as _register_demo
    _register_demo(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        result = a.func(a)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except VasError as e:
        if a.debug:
            raise
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
