"""`vas-proxy eval`: base sampling, VAS at each beta (and weight setting) and Best-of-N at each N
on the same prompts; rewards, KL to the base, upstream cost, plots."""

from __future__ import annotations

import argparse

from ..options import UpstreamOptions, add_options, from_args
from .config import EvalConfig


def register(sub) -> None:
    """Add the `eval` subcommand: EvalConfig's flags, and the upstream's key (kept out of the
    config, which is written to eval.json)."""
    p = sub.add_parser("eval", help="compare base sampling, VAS and Best-of-N on a prompt set",
                       description=__doc__.split("\n\n")[0].replace("\n", " "))
    add_options(p, EvalConfig)
    add_options(p, UpstreamOptions, only=["api_key"])
    p.set_defaults(func=_main)


def config_from_args(a: argparse.Namespace) -> EvalConfig:
    return from_args(EvalConfig, a)


async def _main(a: argparse.Namespace) -> int:
    from .harness import run

    await run(config_from_args(a), api_key=from_args(UpstreamOptions, a).api_key)
    return 0
