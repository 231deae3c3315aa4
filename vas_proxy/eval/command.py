"""`vas-proxy eval`: base sampling, VAS at each beta (and weight setting) and Best-of-N at each N
on the same prompts; rewards, KL to the base, upstream cost, plots."""

from __future__ import annotations

import argparse
import os

from .config import EvalConfig, parse_floats, parse_ints, parse_weights


def register(sub) -> None:
    p = sub.add_parser("eval", help="compare base sampling, VAS and Best-of-N on a prompt set",
                       description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--prompts", required=True, metavar="FILE",
                   help="prompts JSONL: \"prompt\" (raw text) or \"messages\" (chat) per line, "
                        "as for training")
    p.add_argument("--reward", action="append", required=True, metavar="[NAME=]SPEC",
                   help="reward to report: vader, concise, plain, py:module:function or "
                        "hf:PATH; repeatable (the first one picks the Best-of-N winner)")
    p.add_argument("--value", action="append", metavar="NAME=SPEC",
                   help="value model for VAS: a checkpoint dir, bundled:NAME or "
                        "py:module:function; repeatable (default: the bundled demo model)")
    p.add_argument("--beta", default="0,0.5,1,2,4", metavar="B,B,...",
                   help="guidance strengths; 0 is base sampling (default: %(default)s)")
    p.add_argument("--best-of", default="1,4,16", metavar="N,N,...",
                   help="Best-of-N sizes, or none (default: %(default)s)")
    p.add_argument("--weights", action="append", metavar="NAME=W,...",
                   help="one weight setting of the value models (negative pushes away); "
                        "repeatable: each is run at every beta (default: all at weight 1)")
    p.add_argument("--bon-reward", metavar="NAME", help="reward that picks the Best-of-N "
                                                        "winner (default: the first --reward)")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per response "
                                                              "(default: %(default)s)")
    p.add_argument("--top-k", type=int, default=20, help="candidates per step (default 20)")
    p.add_argument("--speculate", type=int, default=0,
                   help="VAS draft tokens per upstream call: 0 one token per call, -1 adaptive "
                        "(exact either way; fewer calls)")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i in every setting")
    p.add_argument("--samples", type=int, default=1, help="responses per prompt and setting")
    p.add_argument("--limit", type=int, help="use the first N prompts only")
    p.add_argument("--concurrency", type=int, default=2, help="generations in flight")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="results.jsonl, summary.csv, summary.md and the PNG plots go here")
    p.add_argument("--resume", action="store_true",
                   help="add to --out: skip generations already in its results.jsonl")
    g = p.add_argument_group("upstream")
    g.add_argument("--upstream", metavar="URL",
                   help="OpenAI-compatible base URL ending in /v1 (default: the embedded "
                        "SmolLM2 upstream)")
    g.add_argument("--model", metavar="NAME")
    g.add_argument("--provider", default="llamacpp")
    g.add_argument("--chat-template", metavar="SPEC")
    g.add_argument("--api-key", help="upstream API key (or VAS_UPSTREAM_API_KEY)")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds per upstream call")
    g.add_argument("--device", default="cpu", help="value-model and reward device")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or table")
    p.set_defaults(func=_main)


def config_from_args(a: argparse.Namespace) -> EvalConfig:
    from ..runtime import parse_reward_specs, parse_value_specs

    return EvalConfig(
        prompts=a.prompts, rewards=parse_reward_specs(a.reward), out=a.out,
        values=parse_value_specs(a.value), betas=parse_floats(a.beta, "--beta"),
        best_of=parse_ints(a.best_of, "--best-of"),
        weights=[parse_weights(w) for w in a.weights] if a.weights else None,
        bon_reward=a.bon_reward, max_tokens=a.max_tokens, top_k=a.top_k,
        speculate=a.speculate, seed=a.seed, samples=a.samples, limit=a.limit,
        concurrency=a.concurrency, upstream=a.upstream, model=a.model, provider=a.provider,
        chat_template=a.chat_template, device=a.device, dtype=a.dtype, timeout=a.timeout,
        resume=a.resume, quiet=a.quiet)


async def _main(a: argparse.Namespace) -> int:
    from .harness import run

    await run(config_from_args(a), api_key=a.api_key or os.environ.get("VAS_UPSTREAM_API_KEY"))
    return 0
