"""The README "Frontier" sections from the evaluations `benchmarks/run_frontier.sh` made
(docs/results/frontier, docs/results/frontier_plain): reward against cost per response under
each price model and against latency, for every method, with paired standard errors, and the
issue's goal checked plainly.

    python benchmarks/frontier_results.py                  # vader: docs/results/FRONTIER.md
    python benchmarks/frontier_results.py --frontier plain # plain: docs/results/FRONTIER_PLAIN.md
                                                           # (and README between its markers)

A setting with fewer than the full 128 responses (the run was stopped) is marked "partial";
pairs are always over the (prompt, draw) both settings have.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vas_proxy.eval.files import RESULTS_FILE, read_records  # noqa: E402
from vas_proxy.eval.report import mean_se, pm, summarise  # noqa: E402
from vas_proxy.prices import cost, parse_prices, record_calls  # noqa: E402

FULL = 128
REWARDS = ["vader", "plain"]
PRICES = ["flat", "out4", "out4-prefix", "openai"]
GOAL_PRICE = "out4-prefix"

# What differs between the two runs: the reward that picks and is guided for, the value model,
# the upstream, and what ran beside each (written down from the run's log, not inferred).
FRONTIERS = {
    "vader": dict(
        dir="frontier", doc="FRONTIER.md", marker="frontier", title="vader",
        value="the bundled `positivity` (trained on `vader`)",
        upstream="the embedded SmolLM2-135M-Instruct (llama-cpp-python, the embedded default "
                 "then; `--embedded llama-cpp-python` now)",
        cached="Its upstream, llama-cpp-python, reports no cached tokens, so the prefix-cache "
               "costs are the tables' estimates",
        beside="Beside it, at times, ran light jobs (a few fake-upstream test files and short "
               "profiling runs, during part of pbon16, vas β=4, gbon and pbon8): the `s / "
               "response` column is affected by them, rewards and costs are not; the run was "
               "resumed twice (docs/results/frontier.log says when and why). Its settings ran "
               "in the script's earlier order, value-pruned Best-of-16 second."),
    "plain": dict(
        dir="frontier_plain", doc="FRONTIER_PLAIN.md", marker="frontier-plain", title="plain",
        value="the bundled `plain` (trained on `plain`: −syllables per word)",
        upstream="the embedded SmolLM2-135M-Instruct (llama.cpp's `llama-server`, the embedded "
                 "default)",
        cached="Its upstream, llama-server, reports the prompt tokens its prefix cache served "
               "(`usage.vas.upstream_cached_tokens`: all but the last prompt token once a slot "
               "has seen the prompt, Best-of-N's repeated samples included), and every table "
               "prices a reported number as reported (no 64-token rounding, no 1024-token "
               "minimum: so the `openai` column here is not what OpenAI, which reports nothing "
               "below 1024 tokens, would bill), so costs here are not comparable with the vader "
               "frontier's estimates",
        beside="Beside it ran only a few short unit-test runs (under a minute of CPU in all, "
               "during the guided Best-of-2 and value-pruned Best-of-16 settings), a pip "
               "dependency resolution and a duplicate-code scan; it was stopped by hand twice "
               "and resumed (docs/results/frontier_plain.log says when and why).",
        added="Rows added later with `--resume`, same prompts, seeds and settings: `tuned ...` "
              "and the mixed VAS row (the RL baselines, `bash benchmarks/rl_baselines.sh`), and "
              "`plain64` and `positivity64` (the value models retrained at 64 tokens, `bash "
              "benchmarks/retrain64.sh`; docs/training/retrain64/; `plain64` at β 3.1 is the "
              "beta `vas-proxy calibrate` chose for Best-of-16's 1.84 nats, "
              "docs/training/candidates/), the two plain models averaged at the beta "
              "calibrated for the same budget (docs/training/ensemble/), and `plainR`, the "
              "reward itself read on the text so far (`reward:plain`), alone and with bundled "
              "plain, each at its calibrated beta (docs/training/prefix/), `plainRes`, "
              "a value model trained with `--residual` (`plainResW`: with `--residual-words`), "
              "each at its calibrated beta (docs/training/residual/), `plainAll` and "
              "`posAll`, retrain64's recipe with LoRA on all 30 layers, each at its calibrated "
              "beta (docs/training/capacity/), bundled plain with `plainR` again at β 1.6, "
              "the beta `calibrate --check` measured for 1.84 nats (docs/training/check/), and "
              "`pos6`, retrain64's vader recipe with 6 epochs, at its calibrated beta "
              "(docs/training/epochs64/)."),
}


def by_setting(records):
    out = defaultdict(dict)
    for r in records:
        out[r["setting"]][(r["prompt_index"], r["sample"])] = r
    return out


def record_cost(r: dict, price) -> float:
    return cost(record_calls(r), price)[0]


def paired_diff(a: dict, b: dict, f) -> tuple[float, float, int]:
    keys = sorted(set(a) & set(b))
    m, se = mean_se([f(a[k]) - f(b[k]) for k in keys])
    return m, se, len(keys)


def label(name: str, n: int) -> str:
    return name if n >= FULL else f"{name} (partial: {n} of {FULL})"


def render(records: list[dict], command: str, f: dict) -> str:
    prices = parse_prices(PRICES)
    rows = summarise(records, REWARDS, prices=prices)
    sets = by_setting(records)
    lines = [
        f"## Frontier ({f['title']}): reward per cost and per second (64 tokens)", "",
        "Held-out prompts: the first 64 of `data/prompts/everyday_heldout.jsonl`, each drawn twice "
        "(seeds 0–63 and 64–127, the same seed per prompt and draw in every setting), **64 "
        "tokens** per response, top-20, the default adaptive exact speculation, whole upstream "
        "calls (the eval's bills are the upstream's own), no response cache, two generations in "
        f"flight on the 2-core CPU. {f['beside']} Upstream: {f['upstream']}. Value model: "
        f"{f['value']}.{' ' + f['added'] if 'added' in f else ''} Best-of-N picks by "
        f"{f['title']}; Best-of-1..16 come from one pool of 16 "
        "samples per prompt and draw (Best-of-m = its first m samples, §1.5 of "
        "docs/design.md). Pruned: value-pruned Best-of-N, a pruning every 16 tokens keeping the "
        "best half. Made by `bash benchmarks/run_frontier.sh` (the settings and their order "
        f"were fixed before it ran) and `python benchmarks/frontier_results.py --frontier "
        f"{f['title']}`:",
        "", "```bash", command.strip(), "```", "",
        "Cost per response in units of one uncached input token (mean ± s.e.): `flat` = billed "
        "tokens; `out4` output 4×; `out4-prefix` output 4× and a re-sent prefix at 0.25× in "
        "64-token blocks (DeepSeek's rule, close to self-hosted prefix caching); `openai` output "
        "4×, cached 0.5× only for prompts ≥ 1024 tokens (never reached here). "
        f"{f['cached']}.", "",
        "| setting | n | vader | plain | " + " | ".join(f"cost {p}" for p in PRICES)
        + " | calls | s / response |",
        "|---|---|---|---|" + "---|" * len(PRICES) + "---|---|"]
    for row in rows:
        n = int(row["n"])
        cells = [label(row["setting"], n), str(n)]
        cells += [pm(row[f"{r}_mean"], row[f"{r}_se"]) for r in REWARDS]
        cells += [pm(row[f"cost_{p}_mean"], row[f"cost_{p}_se"], 0) for p in PRICES]
        cells += [f"{row['upstream_calls']:.1f}", f"{row['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![reward vs cost, out4-prefix]"
              f"(docs/results/{f['dir']}/reward_vs_cost_out4-prefix.png)", "",
              f"![reward vs latency](docs/results/{f['dir']}/reward_vs_latency.png)", ""]
    lines += goal(sets, prices, f["title"])
    return "\n".join(lines) + "\n"


def goal(sets: dict, prices, reward: str) -> list[str]:
    """The issue's goal under out4-prefix, each claim as a paired difference ± s.e."""
    price = next(p for p in prices if p.name == GOAL_PRICE)
    out = ["### The goal, checked", "",
           f"Under `{GOAL_PRICE}`: does some guided mode reach Best-of-16's {reward} at ≤ ¼ of "
           f"its cost, and beat Best-of-4's {reward} at ≤ its cost? Differences are paired "
           "over the (prompt, draw) both settings have.", ""]
    bon16, bon4 = sets.get(f"bon N=16 {reward}"), sets.get(f"bon N=4 {reward}")
    guided = [s for s in sets if s.startswith(("vas ", "pbon ", "gbon "))]
    if not bon16 or not bon4 or not guided:
        return out + ["Not yet measured: the run has not reached these settings.", ""]

    def v(r):
        return r["rewards"][reward]

    def c(r):
        return record_cost(r, price)
    c16 = float(np.mean([c(r) for r in bon16.values()]))
    c4 = float(np.mean([c(r) for r in bon4.values()]))
    for name in sorted(guided):
        s = sets[name]
        cost_s = float(np.mean([c(r) for r in s.values()]))
        d16, se16, n16 = paired_diff(s, bon16, v)
        d4, se4, n4 = paired_diff(s, bon4, v)
        reach = d16 > -2 * se16 and cost_s <= c16 / 4
        beat = d4 > 2 * se4 and cost_s <= c4
        out.append(
            f"- {name}: cost {cost_s:.0f} (Best-of-16 {c16:.0f}, ¼ = {c16 / 4:.0f}; Best-of-4 "
            f"{c4:.0f}); {reward} − Best-of-16 {d16:+.3f} ± {se16:.3f} (n = {n16}), "
            f"− Best-of-4 {d4:+.3f} ± {se4:.3f} (n = {n4}). Reaches Best-of-16 (within 2 s.e.) "
            "at ≤ ¼ its "
            f"cost: **{'yes' if reach else 'no'}**; beats Best-of-4 (by > 2 s.e.) at ≤ its cost: "
            f"**{'yes' if beat else 'no'}**.")
    return out + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frontier", choices=sorted(FRONTIERS), default="vader")
    p.add_argument("--dir", type=Path, help="the run's folder (default: the frontier's own)")
    args = p.parse_args()
    f = FRONTIERS[args.frontier]
    folder = args.dir or ROOT / "docs" / "results" / f["dir"]
    records = read_records(folder / RESULTS_FILE)
    script = (ROOT / "benchmarks" / "run_frontier.sh").read_text().splitlines()
    case = next(i for i, x in enumerate(script) if x.startswith(f"  {args.frontier})"))
    command = "\n".join([f"# FRONTIER={args.frontier}"] + script[case:case + 2] + [
        x for x in script if x.startswith(("COMMON", "        --", "run "))])
    text = render(records, command, f)
    (ROOT / "docs" / "results" / f["doc"]).write_text(text)
    readme = ROOT / "README.md"
    s = readme.read_text()
    start, end = f"<!-- {f['marker']}:start -->", f"<!-- {f['marker']}:end -->"
    if start in s and end in s:
        head, rest = s.split(start, 1)
        _, tail = rest.split(end, 1)
        readme.write_text(head + start + "\n" + text + end + tail)
    print(text)


if __name__ == "__main__":
    main()
