"""Summaries of an evaluation directory, from its `results.jsonl` (and `eval.json`) alone.

- `summary.csv`: one row per setting: mean ± standard error of each reward, KL to the base,
  upstream cost (calls, billed tokens, and the cost under each price model of the run's
  `prices`, `vas_proxy.prices`) per response, latency and wall time;
- `summary.md`: the same as a markdown table, with the plots (`plots.py`).

Costs are per response, in units of one uncached input token; `cost_<price>_estimated` says
that some call's cached prompt tokens were estimated from the prefix earlier calls sent,
because the upstream reported none.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..prices import PriceModel, cost, parse_prices, record_calls
from ..stats import mean_se
from .config import weights_label
from .efficiency import bon_pools, effective_rho, exact_bon_kl, kl_to_reach, within_sd
from .files import CONFIG_FILE, RESULTS_FILE, TIMINGS_FILE, kl_field, read_json, read_records
from .plots import (PLOT_COMPOSITION, PLOT_COST, PLOT_KL, PLOT_LATENCY, composition_rows,
                    cost_plot_name, plot)

__all__ = ["SUMMARY_CSV", "SUMMARY_MD", "PLOT_KL", "PLOT_COST", "PLOT_LATENCY",
           "PLOT_COMPOSITION", "composition_rows", "cost_plot_name", "gain_text",
           "markdown_table", "mean_se", "paired", "pm", "summarise", "write_report"]

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
# base, VAS, Best-of-N: plain, value-pruned, of VAS samples
_METHOD_ORDER = {"base": 0, "vas": 1, "bon": 2, "pbon": 3, "gbon": 4, "tuned": 5}
_BEST_OF = ("bon", "pbon", "gbon")


def summarise(records: list[dict], reward_names: list[str],
              timings: dict[str, float] | None = None,
              prices: list[PriceModel] | None = None) -> list[dict]:
    """One row per setting, ordered base, VAS (by weights, then beta), then each Best-of-N
    family (by N). `prices` (default: `defaults.EVAL_PRICES`) add each cost's columns."""
    prices = parse_prices(None) if prices is None else prices
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["setting"]].append(r)
    base = {(r["prompt_index"], r["sample"]): r for r in groups.get("base", [])}
    sds = {reward: within_sd(records, reward) for reward in reward_names}
    rows = []
    for name, rs in groups.items():
        first = rs[0]
        method = first["method"]
        guided = method in ("vas", "pbon", "gbon")  # value models take part
        beta = first.get("beta")
        row = {"setting": name, "method": method,
               "beta": math.nan if method in ("bon", "pbon") or beta is None else beta,
               "weights": weights_label(sorted((first.get("weights") or {}).items()))
               if guided else "",
               "best_of": first.get("best_of") or "", "bon_reward": first.get("bon_reward") or "",
               "n": len(rs)}
        for reward in reward_names:
            row[f"{reward}_mean"], row[f"{reward}_se"] = mean_se(
                r["rewards"].get(reward) for r in rs)
            # Paired with base (same prompt, same seed): the gain and its standard error,
            # which is smaller than the two settings' errors combined when they correlate.
            row[f"{reward}_gain"], row[f"{reward}_gain_se"] = mean_se(
                [g for _, g in paired(rs, base, reward)] if name != "base" else [])
        # None KL (a method without an estimate or a bound, kl_kind "none") shows as "–"
        kl = kl_field(rs)  # the lower-noise estimate, where recorded
        row["kl_mean"], row["kl_se"] = mean_se(r.get(kl) for r in rs)
        if method == "bon":  # one analytic figure; guided Best-of-N's bound varies per response
            row["kl_se"] = math.nan
        row["kl_kind"] = first.get("kl_kind") or "none"
        for reward in reward_names:  # reward per nat, for the rows with an own KL figure
            row[f"{reward}_rho"] = effective_rho(row[f"{reward}_gain"], row["kl_mean"],
                                                 sds[reward]) \
                if method in ("vas", "bon", "gbon") else math.nan
        row["kl_exact"] = exact_bon_kl(bon_pools(records, first.get("bon_reward")),
                                       first["best_of"]) if method == "bon" else math.nan
        tokens = sum(r.get("tokens") or 0 for r in rs)
        for key in ("tokens", "upstream_calls", "billed_tokens", "upstream_prompt_tokens",
                    "upstream_completion_tokens", "rejected_draft_tokens",
                    "upstream_cached_tokens", "seconds"):
            row[key] = mean_se(r.get(key) for r in rs)[0]
        row["calls_per_token"] = sum(r["upstream_calls"] for r in rs) / tokens if tokens else \
            math.nan
        for price in prices:
            costs = [cost(record_calls(r), price) for r in rs]
            key = f"cost_{price.name}"
            row[f"{key}_mean"], row[f"{key}_se"] = mean_se(c for c, _ in costs)
            row[f"{key}_estimated"] = any(est for _, est in costs)
        row["wall_s"] = (timings or {}).get(name, math.nan)
        rows.append(row)
    rows.sort(key=lambda r: (_METHOD_ORDER.get(r["method"], len(_METHOD_ORDER)), r["method"],
                             r["weights"], 0.0 if math.isnan(r["beta"]) else r["beta"],
                             r["bon_reward"], r["best_of"] or 0))
    return rows


def price_names(rows: list[dict]) -> list[str]:
    """The price models the rows carry costs for, in their order."""
    return [k[len("cost_"):-len("_mean")] for k in (rows[0] if rows else {})
            if k.startswith("cost_") and k.endswith("_mean")]


def paired(rs: list[dict], base: dict, reward: str):
    """(record, its reward minus base's) for each record of `rs` whose base response (same
    prompt, same sample: `base` keyed by (prompt_index, sample)) exists and is scored."""
    for r in rs:
        b = base.get((r["prompt_index"], r["sample"]))
        if b is not None and r["rewards"].get(reward) is not None \
                and b["rewards"].get(reward) is not None:
            yield r, r["rewards"][reward] - b["rewards"][reward]


def write_report(out: str | Path, quiet: bool = True) -> dict[str, Path]:
    """Write summary.csv, summary.md and the plots for `out`; returns what was written."""
    out = Path(out)
    records = read_records(out / RESULTS_FILE)
    config = read_json(out / CONFIG_FILE)
    timings = read_json(out / TIMINGS_FILE)
    names = list(dict.fromkeys([*config.get("rewards", {}),
                                *(k for r in records for k in r["rewards"])]))
    prices = parse_prices(_price_paths(config.get("prices"), out))
    rows = summarise(records, names, timings, prices)
    written = {"csv": write_csv(rows, out / SUMMARY_CSV)}
    written.update(plot(rows, names, out, list(config.get("values", {})),
                        [p.name for p in prices]))
    written["md"] = write_markdown(rows, names, out / SUMMARY_MD,
                                   [p.name for k, p in written.items() if k != "csv"], prices)
    if not quiet:
        print(markdown_table(rows, names))
        print(f"wrote {', '.join(str(p) for p in written.values())}")
    return written


def _price_paths(spec, out: Path):
    """The run's `prices` (None: the defaults), a FILE.json that is not where it was given
    looked up in the eval directory too (a report rebuilt from elsewhere)."""
    if spec is None:
        return None
    items = [str(x).strip() for x in (spec.split(",") if isinstance(spec, str) else spec)]
    return [str(out / x) if x.lower().endswith(".json") and not Path(x).expanduser().exists()
            and (out / x).exists() else x for x in items]


def write_csv(rows: list[dict], path: Path) -> Path:
    if rows:
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows([{k: _csv(v) for k, v in r.items()} for r in rows])
    else:
        path.write_text("")
    return path


def _csv(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def pm(mean: float, se: float, digits: int = 3) -> str:
    """"mean ± se" ("–" when there is no mean)."""
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" + ("" if math.isnan(se) else f" ± {se:.{digits}f}")


def _gain(row: dict, name: str) -> str:
    mean, se = row[f"{name}_gain"], row[f"{name}_gain_se"]
    if math.isnan(mean):
        return ""
    return f" (Δ {gain_text(mean, se)})"


def gain_text(mean: float, se: float) -> str:
    """A difference, its standard error and how many of them it is: "+0.089 ± 0.045, +1.98 s.e."."""
    z = "" if math.isnan(se) or se == 0 else f", {mean / se:+.2f} s.e."
    return f"{mean:+.3f} ± {se:.3f}{z}"


def markdown_table(rows: list[dict], names: list[str], labels: list[str] | None = None) -> str:
    """One line per setting (`labels` replace the setting names); costs are per response, one
    column per price model ("est.": partly estimated, see `prices.py`)."""
    prices = price_names(rows)
    head = ["setting", "n", *names, "KL to base (nats)", "upstream calls",
            *(f"cost {p}" for p in prices), "tokens", "s / response", "wall (min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows):
        kl = pm(r["kl_mean"], r["kl_se"], 2)
        if r["kl_kind"] == "bound" and not math.isnan(r["kl_mean"]):
            kl += " (bound)"
        cells = [labels[i] if labels else r["setting"], str(r["n"]),
                 *(pm(r[f"{n}_mean"], r[f"{n}_se"]) + _gain(r, n) for n in names), kl,
                 _num(r["upstream_calls"], 1), *(_cost(r, p) for p in prices),
                 _num(r["tokens"], 1), _num(r["seconds"], 1),
                 "–" if math.isnan(r["wall_s"]) else f"{r['wall_s'] / 60:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(x: float, digits: int) -> str:
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def _cost(row: dict, price: str) -> str:
    text = pm(row[f"cost_{price}_mean"], row[f"cost_{price}_se"], 0)
    return text + (" est." if row[f"cost_{price}_estimated"] else "")


def write_markdown(rows: list[dict], names: list[str], path: Path, plots: list[str],
                   prices: list[PriceModel] = ()) -> Path:
    notes = [f"{p.name}: {p.note or _rule(p)}" for p in prices]
    text = [markdown_table(rows, names), "",
            "Rewards: mean ± standard error over responses; Δ: the mean paired difference "
            "from base (same prompt and seed) ± its standard error, and how many standard "
            "errors that is. KL to base: Σ KL(q ‖ p) over the states each "
            "response passed (p = the upstream's top-k renormalised), averaged (rows run "
            "before it was recorded: Σ log q − log p of the chosen tokens, the same "
            "expectation with more noise); Best-of-N: "
            "the analytic bound log N − (N−1)/N; Best-of-N over VAS samples: that bound plus "
            "the winner's Σ log q − log p (an upper bound). Upstream calls and billed tokens "
            "(prompt + completion, as the upstream counts them) are per response.", ""]
    if notes:
        text += ["Cost per response (mean ± s.e.), in units of one uncached input token, under "
                 "each price model: " + "; ".join(notes) + ". Cached prompt tokens are those "
                 "the upstream reported; where it reported none they are estimated from the "
                 "prompt prefix an earlier call of the response sent (marked est.). s / "
                 "response: seconds per response.", ""]
    text += per_nat_lines(rows, names)
    text += [f"![{p}]({p})" for p in plots]
    path.write_text("\n".join(text) + "\n")
    return path


def per_nat_lines(rows: list[dict], names: list[str]) -> list[str]:
    """summary.md's "reward per nat" section (efficiency.py): for each reward whose
    within-prompt sd the eval can tell, the effective ρ of the VAS rows that raise it by more
    than 2 s.e. (and of Best-of-N over VAS samples picking by it, at its KL bound) and of the
    Best-of-N rows that pick by it, and the KL each of those VAS rows
    would need for the largest Best-of-N's gain."""
    lines = []
    for name in names:
        vas = [r for r in rows if r["method"] in ("vas", "gbon") and r[f"{name}_rho"] > 0
               and r[f"{name}_gain"] > 2 * r[f"{name}_gain_se"]
               and (r["method"] == "vas" or r["bon_reward"] == name)]
        bon = [r for r in rows if r["method"] == "bon" and r["bon_reward"] == name
               and not math.isnan(r[f"{name}_rho"])]
        if not vas:
            continue
        best = max(bon, default=None, key=lambda r: r["best_of"])
        for r in bon:
            exact = "" if math.isnan(r["kl_exact"]) else \
                f" (its pool's distribution, ties counted: {r['kl_exact']:.2f})"
            lines.append(f"- {name}, {r['setting']}: ρ {r[f'{name}_rho']:.2f} at its bound "
                         f"{r['kl_mean']:.2f} nats{exact}")
        for r in vas:
            need = "" if best is None else (
                f"; at this ρ it reaches Best-of-{best['best_of']}'s gain at about "
                f"{kl_to_reach(best[f'{name}_gain'], r[f'{name}_gain'], r['kl_mean']):.1f} nats")
            at = "at its bound " if r["method"] == "gbon" else "at "
            lines.append(f"- {name}, {r['setting']}: ρ {r[f'{name}_rho']:.2f} {at}"
                         f"{r['kl_mean']:.2f} nats{need}")
    if not lines:
        return []
    return [("Reward per nat (docs/design.md §1.10): effective ρ = gain / (sd_w · √(2·KL)), "
             "sd_w the reward's standard deviation within a prompt. A value model's ρ changes "
             "little with beta; 1 would be perfect values; a guided row beats Best-of-N at "
             "equal KL only with a larger ρ than Best-of-N's."), "", *lines, ""]


def _rule(p: PriceModel) -> str:
    """A price model's rule in words (tables from a FILE.json without a note)."""
    return (f"input {p.input:g}, output {p.output:g}, cached input {p.cached_input:g}"
            + (f" for prompts of ≥ {p.min_prompt} tokens" if p.min_prompt else "")
            + (f" in {p.step}-token steps" if p.step > 1 else ""))
