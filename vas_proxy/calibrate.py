"""`vas-proxy calibrate`: the beta that spends a KL budget, predicted before any guided run.

The KL a guided response pays is the sum over its states of KL(q(·|s) ‖ p(·|s)), and at base
states that needs only the value models and the upstream's top-k logprobs (docs/design.md
§1.9): a few base responses, a seeded state cut from each, the engine's own q and p there.
Checked against every guided row measured at 64 tokens (docs/training/candidates/): log KL
Pearson 0.97, within ×1.5 at every row of ≤ 3 nats. Far beyond that, guided states drift from
base ones, and the figure is a guide only. Comparing value models, or VAS with Best-of-N (its
bound: log N − (N−1)/N), is fair only at equal KL: this says which beta gets there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from . import defaults
from .errors import ConfigError
from .options import option
from .options.named_specs import parse_floats, parse_weights

RESULT_FILE = "calibration.json"
TRUSTED_KL = 3.0  # nats: the range the prediction was checked in (docs/training/candidates)


@dataclass
class CalibrateOptions:
    """`vas-proxy calibrate`'s own flags; the upstream and value-model ones are the runtime's
    (cli.py adds them)."""

    TITLE = "calibrate"

    prompts: str = option(None, "prompts JSONL (as `train` reads): base responses to them give "
                                "the states", required=True, metavar="FILE")
    limit: int = option(32, "use the first N prompts", metavar="N")
    samples: int = option(4, "base responses per prompt; one state is cut from each",
                          metavar="N")
    max_tokens: int = option(64, "tokens per response: the horizon whose KL is predicted",
                             metavar="N")
    kl: float | None = option(None, "a KL budget in nats per response: find the beta that "
                                    "spends it (e.g. 1.84, Best-of-16's bound)", metavar="NATS")
    betas: str = option("0.5,1,2,4,8", "betas to tabulate", metavar="B,...")
    weights: str | None = option(None, "weights of the value models, as a request's "
                                       "`vas.weights` (default: 1 each)", metavar="NAME=W,...")
    seed: int = option(defaults.SEED, "seed of the base responses and the cuts")
    out: str | None = option(None, f"keep the states here (a rerun reuses them) and write "
                                   f"{RESULT_FILE}", metavar="DIR")
    concurrency: int = option(2, "upstream requests in flight", metavar="N")
    quiet: bool = option(False, "no progress bars")


def check(o: CalibrateOptions) -> tuple[list[float], dict[str, float] | None]:
    rules = [(o.limit >= 1, "--limit must be >= 1"), (o.samples >= 1, "--samples must be >= 1"),
             (o.max_tokens >= 2, "--max-tokens must be >= 2"),
             (o.concurrency >= 1, "--concurrency must be >= 1"),
             (o.kl is None or o.kl > 0, "--kl must be > 0 nats")]
    for ok, message in rules:
        if not ok:
            raise ConfigError(message)
    betas = parse_floats(o.betas, "--betas")
    if any(b < 0 for b in betas):
        raise ConfigError("--betas must be >= 0")
    return betas, parse_weights(o.weights) if o.weights else None


async def calibrate(o: CalibrateOptions, opts, betas: list[float],
                    weights: dict[str, float] | None) -> dict:
    """Sample the states, score their candidates with the runtime's value models, predict."""
    import tempfile

    import numpy as np

    from .runtime import open_runtime
    from .sampling import combine_values
    from .train.candidates import STATES_FILE, CandidateState, sample_states
    from .train.command import prepare_out_dir
    from .train.onestep import beta_for_kl, predicted_kl
    from .train.prompts import read_prompts, render_prompts
    from .train.rollouts import JsonlStore

    items = read_prompts(o.prompts)[:o.limit]
    out = prepare_out_dir(o.out) if o.out else None
    unknown = set(weights or {}) - set(opts.guidance.values)
    if unknown:
        raise ConfigError(f"--weights names {', '.join(sorted(unknown))}; the value models "
                          f"are {', '.join(opts.guidance.values)}")
    with tempfile.TemporaryDirectory() as tmp:
        store = JsonlStore((out or Path(tmp)) / STATES_FILE, CandidateState)
        async with open_runtime(opts) as rt:
            prompts = render_prompts(items, rt.template)
            top_k = opts.guidance.top_k
            states = await sample_states(
                rt.engine.upstream, prompts, draws=o.samples, k=top_k, complete=0, m=0,
                max_tokens=o.max_tokens, seed=o.seed,
                stop=rt.template.stop_strings if rt.template else [], store=store,
                concurrency=o.concurrency, progress=not o.quiet)
            values = []
            for s in states:
                scores = {name: v.score(s.upstream_prompt, s.prefix, s.texts)
                          for name, v in rt.engine.values.items()}
                values.append(combine_values(scores, weights, len(s.texts)))
    if not states:
        raise ConfigError("no base response was long enough to cut a state from; raise "
                          "--max-tokens or use other prompts")
    table = {f"{b:g}": dict(zip(("kl", "kl_se"), predicted_kl(states, values, b)))
             for b in betas}
    result = {"states": len(states), "mean_tokens": float(np.mean([s.n_tokens for s in states])),
              "values": dict(opts.guidance.values), "weights": weights, "top_k": top_k,
              "options": asdict(o), "betas": table, "budget": None}
    if o.kl is not None:
        beta = beta_for_kl(states, values, o.kl)
        result["budget"] = {"kl": o.kl, "beta": beta,
                            "predicted": None if beta is None else
                            dict(zip(("kl", "kl_se"), predicted_kl(states, values, beta)))}
    if out:
        (out / RESULT_FILE).write_text(json.dumps(result, indent=1) + "\n")
    return result


def report(result: dict) -> str:
    head = (f"predicted KL to the base per response ({result['states']} states, "
            f"{result['mean_tokens']:.1f} tokens per response on average, "
            f"top-{result['top_k']}):")
    lines = [head, "  beta   KL (nats)"]
    for b, row in result["betas"].items():
        lines.append(f"  {b:>5}  {row['kl']:.2f} ± {row['kl_se']:.2f}"
                     + ("  (beyond the checked range)" if row["kl"] > TRUSTED_KL else ""))
    budget = result["budget"]
    if budget is not None:
        if budget["beta"] is None:
            lines.append(f"no beta spends {budget['kl']:g} nats: the value models hardly "
                         "separate the candidates")
        else:
            p = budget["predicted"]
            lines.append(f"for {budget['kl']:g} nats: --beta {budget['beta']:.3g} (predicted "
                         f"{p['kl']:.2f} ± {p['kl_se']:.2f})")
    lines.append(f"Predicted at base states: within ×1.5 of measured guided runs up to "
                 f"{TRUSTED_KL:g} nats (docs/training/candidates); beyond, a guide only.")
    return "\n".join(lines)
