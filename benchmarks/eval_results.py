"""The README "Results": `vas-proxy eval` on the held-out prompts, then docs/results/RESULTS.md.

Two evaluations into one directory (the second resumes it, so shared settings run once):

1. main: base sampling, VAS with the bundled positivity model at beta 1, 2, 4 and Best-of-N
   (N = 1, 4, 16, picked by vader), rewards vader and plain;
2. composition (when the bundled `plain` model exists): VAS at beta 4 with the weights
   (1−w)·positivity + w·plain for w = 0, .5, 1 (w = 0 is the main run's beta 4 setting).

Then a second draw of base and VAS at beta 1, 2, 4 on the same prompts with the next 64 seeds
(its own directory): the "Does it guide?" table pools both draws (n = 128 per setting) and
computes the gain's standard error over the 64 prompts (each prompt's two paired gains
averaged first), since two responses to one prompt are not independent.

Cost on the 2-core CPU: about one upstream call per 3 tokens (adaptive exact speculation) plus
one value scoring per token for VAS (~0.2–1 s each, depending on the load), and N full
generations per response for Best-of-N. It resumes where it stopped (results are appended as
they finish). Run it in the background:

    nohup .venv/bin/python benchmarks/eval_results.py > docs/results/eval.log 2>&1 &

`--render-only` rewrites RESULTS.md (and README.md between its results markers) from the
results already there.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vas_proxy.assets import DATA_DIR  # noqa: E402
from vas_proxy.cli import main as cli  # noqa: E402

OUT = ROOT / "docs" / "results"
EVAL_DIR = OUT / "eval"
SECOND_DIR = OUT / "eval_seed64"
PROMPTS = "data/prompts/everyday_heldout.jsonl"
N_PROMPTS = 64
GUIDE_BETAS = (1, 2, 4)


def common(out: Path, seed: int) -> list[str]:
    return ["--prompts", PROMPTS, "--limit", str(N_PROMPTS), "--reward", "vader", "--reward",
            "plain", "--max-tokens", "32", "--speculate", "-1", "--seed", str(seed), "--out",
            str(out.relative_to(ROOT)), "--resume"]


POSITIVITY = ["--value", "positivity=bundled:positivity"]
BETAS = ["--beta", "0," + ",".join(map(str, GUIDE_BETAS))]
MAIN = ["eval", *common(EVAL_DIR, 0), *POSITIVITY, *BETAS, "--best-of", "1,4,16"]
COMPOSE_BETA = 4.0
COMPOSE = ["eval", *common(EVAL_DIR, 0), *POSITIVITY,
           "--value", "plain=bundled:plain", "--beta", f"{COMPOSE_BETA:g}", "--best-of", "none",
           *[x for w in (0, 0.5, 1)
             for x in ("--weights", f"positivity={1 - w:g},plain={w:g}")]]
# Seeds 64..127: prompt i gets seed 64 + i, the seeds `--samples 2` would give its 2nd sample.
SECOND = ["eval", *common(SECOND_DIR, N_PROMPTS), *POSITIVITY, *BETAS, "--best-of", "none"]


def has_plain() -> bool:
    return (DATA_DIR / "values" / "plain" / "vas_value.json").is_file()


def run() -> None:
    os.chdir(ROOT)  # the commands name repository-relative paths
    EVAL_DIR.mkdir(parents=True, exist_ok=True)
    for args in (MAIN, COMPOSE, SECOND) if has_plain() else (MAIN, SECOND):
        print("$ vas-proxy " + shlex.join(args), flush=True)
        if cli(args) != 0:
            raise SystemExit(1)


# ----------------------------------------------------------------------------- RESULTS.md

def _trend(values: list[float]) -> str:
    diffs = [b - a for a, b in zip(values, values[1:])]
    if all(d > 0 for d in diffs):
        return "rises monotonically"
    if all(d < 0 for d in diffs):
        return "falls monotonically"
    return "is not monotone"


def findings(rows: list[dict], compose: list[tuple[float, dict]]) -> list[str]:
    """Statements computed from the numbers (they say what was measured, whichever way)."""
    out = []
    base = next((r for r in rows if r["method"] == "base"), None)
    curve = sorted((r for r in rows if r["method"] == "vas" and r["weights"] == "positivity=1"),
                   key=lambda r: r["beta"])
    bon = {r["best_of"]: r for r in rows if r["method"] == "bon"}
    if base and curve:
        pts = [base, *curve]
        vs = [r["vader_mean"] for r in pts]
        kls = " → ".join(f"{r['kl_mean']:.2f}" for r in pts)
        out.append(f"- vader with beta ({', '.join(_b(r) for r in pts)}): "
                   f"{' → '.join(f'{v:.3f}' for v in vs)}; it {_trend(vs)} "
                   f"(paper: rises with beta). KL to base: {kls} nats.")
        for r in curve:
            diff, se = _unpaired(r, base)
            out.append(f"- VAS β={r['beta']:g} vs base: vader {diff:+.3f}: "
                       f"{r['vader_gain'] / r['vader_gain_se']:+.2f} standard errors of the "
                       f"paired difference (± {r['vader_gain_se']:.3f}), {diff / se:+.2f} of "
                       f"the unpaired one (± {se:.3f}).")
    best = max(curve, key=lambda r: r["vader_mean"]) if curve else None
    if best and 16 in bon:
        b16 = bon[16]
        ratio_tok = b16["billed_tokens"] / best["billed_tokens"]
        ratio_calls = b16["upstream_calls"] / best["upstream_calls"]
        out.append(f"- Best VAS (β={best['beta']:g}): vader {_pm2(best, 'vader')} at "
                   f"{best['upstream_calls']:.1f} calls and {best['billed_tokens']:.0f} billed "
                   f"tokens per response; Best-of-16: {_pm2(b16, 'vader')} at "
                   f"{b16['upstream_calls']:.0f} calls and {b16['billed_tokens']:.0f} tokens "
                   f"(BoN-16 costs {ratio_calls:.1f}× the calls, {ratio_tok:.1f}× the billed "
                   f"tokens; paper: VAS near BoN at a fraction of its cost).")
    if best and bon:
        beat = [r for n, r in sorted(bon.items()) if r["vader_mean"] > best["vader_mean"]]
        if beat:
            r = beat[0]
            out.append(f"- The cheapest Best-of-N above the best VAS: N={r['best_of']} "
                       f"({_pm2(r, 'vader')}, {r['billed_tokens']:.0f} billed tokens per "
                       f"response, {r['billed_tokens'] / best['billed_tokens']:.2f}× VAS β="
                       f"{best['beta']:g}'s).")
    if base and 1 in bon:
        diff, se = _unpaired(bon[1], base)
        out.append(f"- Best-of-1 and base sample the same distribution (the upstream's top-20, "
                   f"by the upstream in one call vs by our loop token by token); their vader "
                   f"differ by {diff:+.3f} ({diff / se:+.2f} standard errors, unpaired).")
    if compose:
        for name in ("vader", "plain"):
            vs = [r[f"{name}_mean"] for _, r in compose]
            out.append(f"- composition, {name} as w goes 0 → 1 (weight moving from positivity "
                       f"to plain): {' → '.join(f'{v:.3f}' for v in vs)}; it {_trend(vs)}.")
    return out


def _unpaired(r: dict, base: dict) -> tuple[float, float]:
    """vader of `r` minus base's, and the standard error of that difference (independent)."""
    return r["vader_mean"] - base["vader_mean"], math.hypot(r["vader_se"], base["vader_se"])


def _b(r):
    return "β=0" if r["method"] == "base" else f"β={r['beta']:g}"


def _pm2(r, name):
    from vas_proxy.eval.report import pm

    return pm(r[f"{name}_mean"], r[f"{name}_se"])


def render() -> Path:
    import json

    from vas_proxy.eval.files import CONFIG_FILE, RESULTS_FILE, TIMINGS_FILE, read_records
    from vas_proxy.eval.report import (composition_rows, markdown_table, summarise,
                                       write_report)

    write_report(EVAL_DIR)
    records = read_records(EVAL_DIR / RESULTS_FILE)
    timings = json.loads((EVAL_DIR / TIMINGS_FILE).read_text())
    config = json.loads((EVAL_DIR / CONFIG_FILE).read_text())
    names = ["vader", "plain"]
    rows = summarise(records, names, timings)
    comp = composition_rows(rows, list(config.get("values", {})))
    compose = comp[1] if comp else []
    compose_names = {r["setting"] for _, r in compose} - {
        r["setting"] for r in rows if r["weights"] == "positivity=1"}
    main_rows = [r for r in rows if r["setting"] not in compose_names]
    rel = EVAL_DIR.relative_to(ROOT)  # paths as seen from the repository root (README)
    lines = [
        "## Results at 32 tokens (the previous round)",
        "",
        f"Held-out prompts: the first 64 of `{PROMPTS}` (chats the value models never saw), "
        "32 tokens per response, one response per prompt and setting, prompt i with seed i in "
        "every setting. Upstream: the embedded SmolLM2-135M-Instruct (llama.cpp, CPU). Value "
        "models: the bundled `positivity` (trained on the `vader` reward)"
        + (" and `plain` (trained on the `plain` reward: −syllables per word)" if has_plain()
           else "") + ". VAS uses exact adaptive speculation (`--speculate -1`); Best-of-N "
        "samples N plain completions and keeps the one vader scores highest. No response cache "
        "(costs are what the upstream billed). Made by `python benchmarks/eval_results.py`:",
        "",
        "```bash",
        "vas-proxy " + shlex.join(MAIN),
        *(["vas-proxy " + shlex.join(COMPOSE)] if has_plain() else []),
        "```",
        "",
        "### Reward, KL and cost",
        "",
        markdown_table(main_rows, names),
        "",
        "Mean ± standard error over the 64 responses. KL to base: Σ log q − log p of the "
        "chosen tokens (p = the upstream's top-20 renormalised), averaged: an unbiased estimate of "
        "KL(q‖p) per response; for Best-of-N the analytic bound log N − (N−1)/N. Upstream "
        "calls and billed tokens (prompt + completion as the upstream counts them) per "
        "response; s / response is the latency of one response on the shared 2-core CPU "
        "(two generations in flight).",
        "",
        f"![reward vs KL]({rel}/reward_vs_kl.png)",
        "",
        f"![reward vs upstream cost]({rel}/reward_vs_cost.png)",
        "",
    ]
    if compose:
        lines += [f"### Two objectives: (1−w)·positivity + w·plain at β={comp[0]:g}", "",
                  markdown_table([r for _, r in compose], names,
                                 [f"w={x:g}: {r['setting']}" for x, r in compose]), "",
                  f"![composition]({rel}/composition.png)", ""]
    lines += ["### What this shows", "", *findings(rows, compose), ""]
    path = OUT / "RESULTS.md"
    path.write_text("\n".join(lines))
    _into_readme("\n".join(lines))
    return path


def guidance_table() -> str:
    """"Does it guide?": vader gain of VAS at each beta over base, per draw and pooled."""
    from vas_proxy.eval.files import RESULTS_FILE, read_records
    from vas_proxy.eval.report import gain_text, mean_se, paired, pm

    draws = [read_records(d / RESULTS_FILE) for d in (EVAL_DIR, SECOND_DIR)
             if (d / RESULTS_FILE).exists()]
    bases = [{(r["prompt_index"], r["sample"]): r for r in recs if r["method"] == "base"}
             for recs in draws]
    base_all = [r["rewards"]["vader"] for base in bases for r in base.values()]
    lines = ["The first draw is the Results' main run (seeds 0–63); the second:", "",
             "```bash", "vas-proxy " + shlex.join(SECOND), "```", "",
             "| beta (sd units) | vader | KL to base | "
             + " | ".join(f"gain, seeds {_seeds(recs)} (n = {N_PROMPTS})" for recs in draws)
             + f" | gain, pooled (n = {len(base_all)}) |",
             "|---|---|---|" + "---|" * (len(draws) + 1),
             f"| 0 (base) | {pm(*mean_se(base_all))} | 0 | " + " | " * len(draws) + " |"]
    for beta in GUIDE_BETAS:
        name = f"vas b={beta:g} positivity=1"
        pairs = [list(paired([r for r in recs if r["setting"] == name], base, "vader"))
                 for recs, base in zip(draws, bases)]
        done = [r for draw in pairs for r, _ in draw]
        if len(done) < 2:
            continue
        by_prompt: dict[int, list[float]] = {}
        for r, g in (x for draw in pairs for x in draw):
            by_prompt.setdefault(r["prompt_index"], []).append(g)
        pooled = mean_se([sum(g) / len(g) for g in by_prompt.values()])
        cells = [gain_text(*mean_se([g for _, g in draw])) if len(draw) > 1 else "–"
                 for draw in pairs]
        lines.append(f"| {beta:g} | {pm(*mean_se(r['rewards']['vader'] for r in done))} | "
                     f"{sum(r['kl'] for r in done) / len(done):.2f} nats | "
                     + " | ".join(cells) + f" | **{gain_text(*pooled)}** |")
    return "\n".join(lines)


def _seeds(recs: list[dict]) -> str:
    seeds = [r["seed"] for r in recs]
    return f"{min(seeds)}–{max(seeds)}"


def _into_readme(text: str, marker: str = "results") -> None:
    """Put `text` between README.md's `marker` markers (when it has them)."""
    readme = ROOT / "README.md"
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    doc = readme.read_text()
    if start in doc and end in doc:
        head, rest = doc.split(start, 1)
        readme.write_text(head + start + "\n" + text.rstrip() + "\n" + end + rest.split(end, 1)[1])


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--render-only", action="store_true")
    if not p.parse_args().render_only:
        run()
    print(f"wrote {render()}")
    table = guidance_table()
    _into_readme(table, "guidance")
    print(table)
