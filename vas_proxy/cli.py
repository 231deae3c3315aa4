"""`vas-proxy` command line (docs/design.md §5). User errors print one line on stderr and exit 1;
bad flags exit 2 (argparse); Ctrl-C exits 130. No traceback unless --debug.

Every subcommand's flags are the option groups it uses (vas_proxy/options): one definition of
each option, its default and its help.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys

from . import defaults, env
from ._version import __version__
from .errors import ConfigError, VasError
from .options import (CacheOptions, GenerateOptions, GuidanceOptions, LimitOptions,
                      ServeOptions, UpstreamOptions, ValueLoadOptions, add_options, from_args)

# What `open_runtime` needs: the groups of runtime.Options.
RUNTIME_GROUPS = (UpstreamOptions, GuidanceOptions, CacheOptions, ValueLoadOptions)


def add_runtime_options(p: argparse.ArgumentParser, upstream_key_flag: str | None = None,
                        guidance: list[str] | None = None) -> None:
    """The runtime groups' flags; `guidance` keeps only those of GuidanceOptions' fields (a
    command that takes no --beta must not accept one it would ignore)."""
    for group in RUNTIME_GROUPS:
        renamed = {"api_key": upstream_key_flag} if upstream_key_flag else None
        add_options(p, group, flags=renamed if group is UpstreamOptions else None,
                    only=guidance if group is GuidanceOptions else None)


def runtime_options(a: argparse.Namespace, *, rewards: dict[str, str] | None = None,
                    verbose: bool = True):
    """runtime.Options from the parsed runtime groups; bad guidance fails before anything
    starts (the embedded upstream, the value models)."""
    from .runtime import Options

    guidance = from_args(GuidanceOptions, a)
    guidance.engine_defaults()
    return Options(upstream=from_args(UpstreamOptions, a), guidance=guidance,
                   cache=from_args(CacheOptions, a), loading=from_args(ValueLoadOptions, a),
                   rewards=rewards or {}, verbose=verbose)


async def _generate(a: argparse.Namespace) -> int:
    from .engine import GenerationRequest
    from .runtime import open_runtime

    gen = from_args(GenerateOptions, a)
    rewards = _best_of_rewards(gen)  # bad Best-of-N flags fail before anything starts
    async with open_runtime(runtime_options(a, rewards=rewards, verbose=not gen.quiet)) as rt:
        prepared = await rt.prepare_prompt(gen.prompt, raw=gen.raw)
        req = GenerationRequest(prompt=prepared.text, upstream_prompt=prepared.upstream,
                                max_tokens=gen.max_tokens, temperature=gen.temperature,
                                top_p=gen.top_p, stop=gen.stop or [], seed=gen.seed,
                                guidance=rt.engine.defaults)
        if gen.best_of is None:
            from .engine import Outcome

            outcome = Outcome()
            async for ev in rt.engine.stream(req, outcome):
                print(ev.text, end="", flush=True)
            print()
            if not gen.quiet:
                u = outcome.usage
                print(f"KL to the base {outcome.kl:.3g} nats (estimate); {u.upstream_calls} "
                      f"upstream calls, {u.billed_tokens} billed tokens", file=sys.stderr)
            return 0
        from .bestof_modes import run_best_of

        mode = gen.best_of_mode or defaults.BEST_OF_MODES[0]
        ((name, reward),) = rt.rewards.items()
        res = await run_best_of(rt.engine, req, mode=mode, n=gen.best_of, reward=reward,
                                reward_prompt=gen.prompt, block=gen.prune_block,
                                keep=gen.prune_keep)
        print(res.text, flush=True)
        if not gen.quiet:
            u = res.usage
            kl = "" if res.kl is None else f"KL to the base ≤ {res.kl:.3g} nats; "
            print(f"best of {gen.best_of} ({mode}): sample {res.index} won, {name} "
                  f"{res.score:.4g}; {kl}{u.upstream_calls} upstream calls, {u.billed_tokens} "
                  "billed tokens", file=sys.stderr)
    return 0


def _best_of_rewards(gen: GenerateOptions) -> dict[str, str]:
    """The one reward `--best-of` needs ({name: SPEC}), after the rules `vas` follows."""
    from .bestof_modes import check_best_of_fields
    from .options import parse_reward_specs

    check_best_of_fields(gen.best_of_fields())
    if gen.best_of is None:
        return {}
    if not gen.reward:
        raise ConfigError("--best-of needs --reward [NAME=]SPEC: the reward that picks the "
                          "winner", param="vas.reward")
    return parse_reward_specs([gen.reward])


async def _calibrate(a: argparse.Namespace) -> int:
    from .calibrate import CalibrateOptions, calibrate, check, report

    o = from_args(CalibrateOptions, a)
    betas, weights = check(o)
    print(report(await calibrate(o, runtime_options(a, verbose=not o.quiet), betas, weights)))
    return 0


async def _serve(a: argparse.Namespace) -> int:
    import ipaddress
    import logging

    import uvicorn

    from .runtime import open_runtime
    from .service.app import create_app

    srv = from_args(ServeOptions, a)
    limits = from_args(LimitOptions, a)
    try:
        loopback = srv.host == "localhost" or ipaddress.ip_address(srv.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not srv.api_key:
        raise ConfigError(f"refusing to serve on non-loopback address {srv.host} without an API "
                          f"key: pass --api-key or set {env.PROXY_API_KEY}")
    logging.basicConfig(level=srv.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    async with open_runtime(runtime_options(a, rewards=srv.rewards)) as rt:
        app = create_app(rt, api_key=srv.api_key, limits=limits)
        # SIGTERM: stop accepting, let requests in flight finish for `grace` seconds, then
        # cancel them (their upstream calls stop with them)
        config = uvicorn.Config(app, host=srv.host, port=srv.port, log_level=srv.log_level,
                                access_log=False, timeout_graceful_shutdown=limits.grace)
        server = uvicorn.Server(config)
        print(f"vas-proxy serving {rt.model} (upstream {rt.base_url}) on "
              f"http://{srv.host}:{srv.port}/v1", file=sys.stderr, flush=True)
        await server.serve()
    return 0


class _Parser(argparse.ArgumentParser):
    """No abbreviated flags (argparse's default takes `--samp` for `--samples-per-prompt`): an
    abbreviation that works today would change meaning or break when a flag is added, and a
    mistyped flag should fail, not land on its neighbour. Subcommands' parsers inherit this."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vas-proxy", description=(
        "Value Augmented Sampling for hosted LLMs: steer any OpenAI-compatible endpoint that "
        "returns top-k logprobs with a small local value model."))
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="print one guided answer to PROMPT")
    add_options(gen, GenerateOptions)
    add_runtime_options(gen)
    gen.set_defaults(func=_generate)

    srv = sub.add_parser("serve", help="OpenAI-compatible guided service")
    add_options(srv, ServeOptions)
    add_options(srv, LimitOptions)
    add_runtime_options(srv, upstream_key_flag="--upstream-api-key")
    srv.set_defaults(func=_serve)

    from .calibrate import CalibrateOptions
    cal = sub.add_parser("calibrate", help="predict the KL each beta pays; find the beta for a "
                                           "KL budget", description=(
        "Predict, before any guided run, the KL to the base that each beta pays per response "
        "(the value models and the upstream's top-k logprobs at base states), and the beta "
        "that spends a KL budget."))
    add_options(cal, CalibrateOptions)
    add_runtime_options(cal, guidance=["values", "top_k"])
    cal.set_defaults(func=_calibrate)

    # Subcommands owned by other modules register here (each adds its own parser).
    from .train.command import register as _register_train
    _register_train(sub)
    from .eval.command import register as _register_eval
    _register_eval(sub)
    from .demo import register as _register_demo
    _register_demo(sub)
    from .baseline.command import register as _register_baseline
    _register_baseline(sub)
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
