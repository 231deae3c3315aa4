"""Summaries and plots of an evaluation directory, from its `results.jsonl` alone.

- `summary.csv`: one row per setting: mean ± standard error of each reward, KL to the base,
  upstream cost (calls and billed tokens per response), latency and wall time;
- `summary.md`: the same as a markdown table, with the plots;
- `reward_vs_kl.png`, `reward_vs_cost.png`: VAS curves over beta (one per weight setting),
  the Best-of-N curve over N; `composition.png` when several weight settings share a beta.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from .config import weights_label
from .files import CONFIG_FILE, RESULTS_FILE, TIMINGS_FILE, read_json, read_records

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
PLOT_KL = "reward_vs_kl.png"
PLOT_COST = "reward_vs_cost.png"
PLOT_COMPOSITION = "composition.png"
_METHOD_ORDER = {"base": 0, "vas": 1, "bon": 2}


def mean_se(xs) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n)); the error is nan below 2 samples."""
    a = np.asarray([x for x in xs if x is not None], dtype=np.float64)
    if a.size == 0:
        return math.nan, math.nan
    se = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else math.nan
    return float(a.mean()), se


def summarise(records: list[dict], reward_names: list[str],
              timings: dict[str, float] | None = None) -> list[dict]:
    """One row per setting, ordered base, VAS (by weights, then beta), Best-of-N (by N)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["setting"]].append(r)
    base = {(r["prompt_index"], r["sample"]): r for r in groups.get("base", [])}
    rows = []
    for name, rs in groups.items():
        first = rs[0]
        vas = first["method"] == "vas"
        row = {"setting": name, "method": first["method"],
               "beta": math.nan if first["method"] == "bon" else first["beta"],
               "weights": weights_label(sorted(first["weights"].items())) if vas else "",
               "best_of": first.get("best_of") or "", "n": len(rs)}
        for reward in reward_names:
            row[f"{reward}_mean"], row[f"{reward}_se"] = mean_se(
                r["rewards"].get(reward) for r in rs)
            # Paired with base (same prompt, same seed): the gain and its standard error,
            # which is smaller than the two settings' errors combined when they correlate.
            row[f"{reward}_gain"], row[f"{reward}_gain_se"] = mean_se(
                [g for _, g in paired(rs, base, reward)] if name != "base" else [])
        row["kl_mean"], row["kl_se"] = mean_se(r["kl"] for r in rs)
        if first["kl_kind"] == "bound":
            row["kl_se"] = math.nan
        row["kl_kind"] = first["kl_kind"]
        tokens = sum(r["tokens"] for r in rs)
        for key in ("tokens", "upstream_calls", "billed_tokens", "upstream_prompt_tokens",
                    "upstream_completion_tokens", "rejected_draft_tokens", "seconds"):
            row[key] = float(np.mean([r[key] for r in rs]))
        row["calls_per_token"] = sum(r["upstream_calls"] for r in rs) / tokens if tokens else \
            math.nan
        row["wall_s"] = (timings or {}).get(name, math.nan)
        rows.append(row)
    rows.sort(key=lambda r: (_METHOD_ORDER[r["method"]], r["weights"],
                             0.0 if math.isnan(r["beta"]) else r["beta"], r["best_of"] or 0))
    return rows


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
    rows = summarise(records, names, timings)
    written = {"csv": write_csv(rows, out / SUMMARY_CSV)}
    written.update(plot(rows, names, out, list(config.get("values", {}))))
    written["md"] = write_markdown(rows, names, out / SUMMARY_MD,
                                   [p.name for k, p in written.items() if k != "csv"])
    if not quiet:
        print(markdown_table(rows, names))
        print(f"wrote {', '.join(str(p) for p in written.values())}")
    return written


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
    """One line per setting (`labels` replace the setting names); costs are per response."""
    head = ["setting", "n", *names, "KL to base (nats)", "upstream calls", "billed tokens",
            "tokens", "s / response", "wall (min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows):
        kl = pm(r["kl_mean"], r["kl_se"], 2) + (" (bound)" if r["kl_kind"] == "bound" else "")
        cells = [labels[i] if labels else r["setting"], str(r["n"]),
                 *(pm(r[f"{n}_mean"], r[f"{n}_se"]) + _gain(r, n) for n in names), kl,
                 f"{r['upstream_calls']:.1f}", f"{r['billed_tokens']:.0f}",
                 f"{r['tokens']:.1f}", f"{r['seconds']:.1f}",
                 "–" if math.isnan(r["wall_s"]) else f"{r['wall_s'] / 60:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_markdown(rows: list[dict], names: list[str], path: Path, plots: list[str]) -> Path:
    text = [markdown_table(rows, names), "",
            "Rewards: mean ± standard error over responses; Δ: the mean paired difference "
            "from base (same prompt and seed) ± its standard error, and how many standard "
            "errors that is. KL to base: Σ log q − log p of "
            "the chosen tokens (p = the upstream's top-k renormalised), averaged; Best-of-N: "
            "the analytic bound log N − (N−1)/N. Upstream calls and billed tokens (prompt + "
            "completion, as the upstream counts them) are per response.", ""]
    text += [f"![{p}]({p})" for p in plots]
    path.write_text("\n".join(text) + "\n")
    return path


# ------------------------------------------------------------------------------ plots

def _curves(rows: list[dict]):
    """VAS curves (weights label → rows over beta, starting at base) and the BoN curve."""
    base = [r for r in rows if r["method"] == "base"]
    vas: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["method"] == "vas":
            vas[r["weights"]].append(r)
    if any(len(v) > 1 for v in vas.values()):  # single-beta settings belong to composition
        vas = {k: v for k, v in vas.items() if len(v) > 1}
    curves = {f"VAS {k}": base + sorted(v, key=lambda r: r["beta"]) for k, v in vas.items()}
    bon = sorted((r for r in rows if r["method"] == "bon"), key=lambda r: r["best_of"])
    if bon:
        curves[f"Best-of-N ({bon[0]['setting'].split()[-1]})"] = bon
    return curves


def _label(r: dict) -> str:
    if r["method"] == "bon":
        return f"N={r['best_of']}"
    return f"β={r['beta']:g}"


def plot(rows: list[dict], names: list[str], out: Path, value_names: list[str]
         ) -> dict[str, Path]:
    """The PNG plots (matplotlib, Agg backend); {} when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    written = {}
    curves = _curves(rows)
    if curves and names:
        fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
        for ax, name in zip(axes[0], names):
            _draw(ax, curves, name, "kl_mean", "KL to base (nats; BoN: bound)")
        fig.tight_layout()
        fig.savefig(out / PLOT_KL, dpi=110)
        plt.close(fig)
        written["kl"] = out / PLOT_KL
        fig, axes = plt.subplots(len(names), 2, figsize=(11, 4 * len(names)), squeeze=False)
        for row_axes, name in zip(axes, names):
            _draw(row_axes[0], curves, name, "upstream_calls", "upstream calls per response",
                  log=True)
            _draw(row_axes[1], curves, name, "billed_tokens", "billed tokens per response",
                  log=True)
        fig.tight_layout()
        fig.savefig(out / PLOT_COST, dpi=110)
        plt.close(fig)
        written["cost"] = out / PLOT_COST
    comp = composition_rows(rows, value_names)
    if comp and names:
        beta, pts, xlabel = comp
        base = [r for r in rows if r["method"] == "base"]
        fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
        for ax, name in zip(axes[0], names):
            xs = [x for x, _ in pts]
            ax.errorbar(xs, [r[f"{name}_mean"] for _, r in pts],
                        yerr=[_nz(r[f"{name}_se"]) for _, r in pts], marker="o", capsize=3,
                        label=f"VAS β={beta:g}")
            if base:
                ax.axhline(base[0][f"{name}_mean"], color="grey", ls="--", label="base (β=0)")
            if isinstance(xs[0], str):
                ax.tick_params(axis="x", labelrotation=30)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{name} (mean ± s.e.)")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / PLOT_COMPOSITION, dpi=110)
        plt.close(fig)
        written["composition"] = out / PLOT_COMPOSITION
    return written


def _nz(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def _draw(ax, curves, name: str, xkey: str, xlabel: str, log: bool = False) -> None:
    for label, rs in curves.items():
        xs = [r[xkey] for r in rs]
        ys = [r[f"{name}_mean"] for r in rs]
        ax.errorbar(xs, ys, yerr=[_nz(r[f"{name}_se"]) for r in rs], marker="o", capsize=3,
                    ls="--" if label.startswith("Best") else "-", label=label)
        for r, x, y in zip(rs, xs, ys):
            ax.annotate(_label(r), (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{name} (mean ± s.e.)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def composition_rows(rows: list[dict], value_names: list[str]):
    """(beta, [(x, row)], x label) for the beta with the most weight settings (≥ 3), or None.

    With two value models a and b, x is b's share w_b / (w_a + w_b) (the sweep
    (1−w)·a + w·b); otherwise the settings are shown by their labels.
    """
    by_beta: dict[float, list[dict]] = defaultdict(list)
    for r in rows:
        if r["method"] == "vas":
            by_beta[r["beta"]].append(r)
    if not by_beta:
        return None
    beta, rs = max(by_beta.items(), key=lambda kv: (len(kv[1]), kv[0]))
    if len(rs) < 3:
        return None
    used = sorted({n for r in rs for n in _weights(r)}, key=lambda n: (
        value_names.index(n) if n in value_names else len(value_names), n))
    if len(used) == 2:
        a, b = used
        pts = []
        for r in rs:
            w = _weights(r)
            total = w.get(a, 0.0) + w.get(b, 0.0)
            if total > 0 and w.get(a, 0.0) >= 0 and w.get(b, 0.0) >= 0:
                pts.append((w.get(b, 0.0) / total, r))
        if len(pts) >= 3:
            return beta, sorted(pts, key=lambda p: p[0]), f"w: weights (1−w)·{a} + w·{b}"
    return beta, [(r["weights"], r) for r in rs], "weights"


def _weights(row: dict) -> dict[str, float]:
    out = {}
    for item in row["weights"].split():
        name, _, w = item.partition("=")
        if _:
            out[name] = float(w)
    return out
