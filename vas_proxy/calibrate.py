"""`vas-proxy calibrate`: the beta that spends a KL budget, predicted before any guided run.

The KL a guided response pays is the sum over its states of KL(q(·|s) ‖ p(·|s)), and at base
states that needs only the value models and the upstream's top-k logprobs (docs/design.md
§1.9): a few base responses, a seeded state cut from each, the engine's own q and p there.
Checked against every guided row measured at 64 tokens (docs/training/candidates/): log KL
Pearson 0.97, within ×1.5 at every row of ≤ 3 nats; at the beta it later chose for 1.84 nats,
rows paid 0.68 to 2.44 nats (the misses: the reward itself as a value, and one trained model,
docs/training/epochs64/). Far beyond 3 nats, guided states drift from base ones, and the
figure is a guide only. Comparing value models, or VAS with Best-of-N (its bound:
log N − (N−1)/N), is fair only at equal KL: this says which beta gets there.

With the reward itself as a value, the prediction missed by up to ×2.7 (guided responses leave
behind the base states where such a value is most spread), so `--check N` then measures: N
guided responses at the predicted beta, each one's KL summed along the states it passed (the
engine's own q and p), and the beta is corrected by measured ÷ predicted and measured again.
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
_CHECK_STREAM = 3_000_017  # the check's seeds, apart from the states' (candidates.py)


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
    check: int = option(0, "with --kl, then measure: N guided responses at the beta found, "
                           "their KL along the states they passed; the beta is corrected by "
                           "measured ÷ predicted and measured again (--rounds). 32 is ~4 "
                           "minutes a round at 64 tokens on a 2-core CPU", metavar="N")
    rounds: int = option(2, "measured rounds of --check", metavar="N")
    concurrency: int = option(2, "upstream requests in flight", metavar="N")
    quiet: bool = option(False, "no progress bars")


def check(o: CalibrateOptions) -> tuple[list[float], dict[str, float] | None]:
    rules = [(o.limit >= 1, "--limit must be >= 1"), (o.samples >= 1, "--samples must be >= 1"),
             (o.max_tokens >= 2, "--max-tokens must be >= 2"),
             (o.concurrency >= 1, "--concurrency must be >= 1"),
             (o.kl is None or o.kl > 0, "--kl must be > 0 nats"),
             (o.check == 0 or o.check >= 2, "--check needs at least 2 responses (0: off)"),
             (o.rounds >= 1, "--rounds must be >= 1"),
             (o.check == 0 or o.kl is not None, "--check measures the beta found for --kl: "
                                                "give --kl NATS")]
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
            scores = [({name: v.score(s.upstream_prompt, s.prefix, s.texts)
                        for name, v in rt.engine.values.items()}, len(s.texts)) for s in states]

            def values_at(beta: float) -> list:
                return [combine_values(sc, weights, k, beta=beta, binary=rt.engine.binary)
                        for sc, k in scores]

            values = values_at if rt.engine.binary else values_at(0.0)
            if not states:
                raise ConfigError("no base response was long enough to cut a state from; "
                                  "raise --max-tokens or use other prompts")
            table = {f"{b:g}": dict(zip(("kl", "kl_se"), predicted_kl(states, values, b)))
                     for b in betas}
            result = {"states": len(states),
                      "mean_tokens": float(np.mean([s.n_tokens for s in states])),
                      "values": dict(opts.guidance.values), "weights": weights, "top_k": top_k,
                      "options": asdict(o), "betas": table, "budget": None}
            if o.kl is not None:
                beta = beta_for_kl(states, values, o.kl)
                result["budget"] = {"kl": o.kl, "beta": beta,
                                    "predicted": None if beta is None else
                                    dict(zip(("kl", "kl_se"), predicted_kl(states, values, beta)))}
                if beta is not None and o.check:
                    prepared = [await rt.prepare_item(p) for p in prompts]
                    result["check"] = await _check(o, rt, prepared, weights, beta,
                                                   lambda b: predicted_kl(states, values, b)[0],
                                                   lambda kl: beta_for_kl(states, values, kl))
    if out:
        (out / RESULT_FILE).write_text(json.dumps(result, indent=1) + "\n")
    return result


async def _check(o: CalibrateOptions, rt, prepared: list, weights, beta: float, predict,
                 solve) -> dict:
    """`--check`: measure the KL `o.check` guided responses pay at `beta`, correct beta by
    measured ÷ predicted, and again for `o.rounds` rounds. Every round uses the same prompts
    and seeds, so the rounds differ by beta, not by draw."""
    from .engine import GenerationRequest
    from .stats import mean_se
    from .train.rollouts import derive_seed, run_jobs

    seeds = [derive_seed(o.seed, i, _CHECK_STREAM) for i in range(o.check)]
    rounds = []
    for r in range(o.rounds):
        guidance = rt.engine.resolve({"beta": beta, "weights": weights})
        kls = [0.0] * o.check

        async def one(i: int, guidance=guidance) -> None:
            prep = prepared[i % len(prepared)]
            g = await rt.engine.generate(GenerationRequest(
                prompt=prep.text, upstream_prompt=prep.upstream, max_tokens=o.max_tokens,
                seed=seeds[i], guidance=guidance))
            kls[i] = g.path_kl

        await run_jobs(list(range(o.check)), one, o.concurrency,
                       f"check {r + 1}/{o.rounds} at beta {beta:.3g}", not o.quiet)
        measured, se = mean_se(kls)
        predicted = predict(beta)
        rounds.append({"beta": beta, "predicted": predicted, "measured": measured,
                       "measured_se": se})
        if measured <= 0 or predicted <= 0:
            return {"rounds": rounds, "beta": None}
        corrected = solve(o.kl * predicted / measured)
        if corrected is None:
            return {"rounds": rounds, "beta": None}
        beta = corrected
    return {"rounds": rounds, "beta": beta}


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
    check = result.get("check")
    if check:
        lines.append("measured (guided responses, KL summed along the states they passed):")
        lines.append("  beta   predicted   measured")
        for row in check["rounds"]:
            lines.append(f"  {row['beta']:>5.3g}  {row['predicted']:9.2f}   "
                         f"{row['measured']:.2f} ± {row['measured_se']:.2f}")
        if check["beta"] is None:
            lines.append("the measured KL leaves no beta to correct to")
        else:
            lines.append(f"for {budget['kl']:g} nats, measured: --beta {check['beta']:.3g} "
                         f"(the prediction scaled by the last round's measured ÷ predicted)")
    lines.append("Predicted at base states, a guide: at the beta it chose for 1.84 nats, "
                 "measured guided runs paid 0.68 to 2.44 (README, \"How far to trust it\"); "
                 f"beyond {TRUSTED_KL:g} nats it errs more. --check N measures.")
    return "\n".join(lines)
