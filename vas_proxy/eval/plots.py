"""The PNG plots of an evaluation, from the summary rows (`report.summarise`) alone.

One curve per method family: VAS over beta (one per weight setting, starting at base),
Best-of-N over N (plain samples, value-pruned samples, and VAS samples at each beta), so a
reader sees what each extra unit of KL, cost or latency buys.

- `reward_vs_kl.png`: every reward against KL to the base (points without a KL are left out);
- `reward_vs_cost.png`: every reward against upstream calls and billed tokens (the `flat`
  price model) per response;
- `reward_vs_cost_<price>.png`: the first reward against the cost per response under each
  other price model (`vas_proxy.prices`);
- `reward_vs_latency.png`: the first reward against seconds per response;
- `composition.png`: when several weight settings share a beta.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

PLOT_KL = "reward_vs_kl.png"
PLOT_COST = "reward_vs_cost.png"  # calls and billed tokens: the `flat` price model
PLOT_LATENCY = "reward_vs_latency.png"
PLOT_COMPOSITION = "composition.png"
FLAT = "flat"


def cost_plot_name(price: str) -> str:
    """The plot file of one price model; `flat`'s is `reward_vs_cost.png`."""
    return PLOT_COST if price == FLAT else f"reward_vs_cost_{price}.png"


def curves(rows: list[dict]) -> dict[str, list[dict]]:
    """Curve label → its rows in order: VAS per weight setting over beta (from base), each
    Best-of-N family over N. Base alone when nothing else would show it."""
    base = [r for r in rows if r["method"] == "base"]
    vas: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["method"] == "vas":
            vas[r["weights"]].append(r)
    if any(len(v) > 1 for v in vas.values()):  # single-beta settings belong to composition
        vas = {k: v for k, v in vas.items() if len(v) > 1}
    out = {f"VAS {k}": base + sorted(v, key=lambda r: r["beta"]) for k, v in vas.items()}
    # A family is every N of one setting: its name without the "N=.." part
    families: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["method"] in ("bon", "pbon", "gbon"):
            families[" ".join(w for w in r["setting"].split() if not _N.fullmatch(w))].append(r)
    labels = {key: _family(rs[0]) for key, rs in families.items()}
    for key, rs in families.items():
        label = labels[key]
        if list(labels.values()).count(label) > 1:  # e.g. two prune settings: say which
            label = f"{label}: {key}"
        out[label] = sorted(rs, key=lambda r: r["best_of"] or 0)
    for r in rows:  # an RL-tuned model is one point: one strength, one fixed mixture
        if r["method"] == "tuned":
            out[f"RL {r['setting'].split(' ', 1)[1]}"] = [r]
    if base and not out:
        out["base"] = base
    return out


_N = re.compile(r"N=\d+")


def _family(r: dict) -> str:
    reward = r.get("bon_reward") or ""
    tail = f" ({reward})" if reward else ""
    if r["method"] == "bon":
        return f"Best-of-N{tail}"
    if r["method"] == "pbon":
        return f"pruned Best-of-N{tail}"
    return f"Best-of-N of VAS β={r['beta']:g}{tail}"


def _label(r: dict) -> str:
    if r["method"] == "tuned":
        return ""
    if r["method"] in ("bon", "pbon", "gbon"):
        return f"N={r['best_of']}"
    return f"β={r['beta']:g}"


def plot(rows: list[dict], names: list[str], out: Path, value_names: list[str],
         prices: list[str] = ()) -> dict[str, Path]:
    """The PNG plots (matplotlib, Agg backend); {} when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    written: dict[str, Path] = {}

    def save(fig, key: str, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written[key] = out / name

    lines = curves(rows)
    if lines and names:
        fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
        for ax, name in zip(axes[0], names):
            _draw(ax, lines, name, "kl_mean", "KL to base (nats; Best-of-N: bound)")
        save(fig, "kl", PLOT_KL)
        fig, axes = plt.subplots(len(names), 2, figsize=(11, 4 * len(names)), squeeze=False)
        for row_axes, name in zip(axes, names):
            _draw(row_axes[0], lines, name, "upstream_calls", "upstream calls per response",
                  log=True)
            _draw(row_axes[1], lines, name, "billed_tokens",
                  "billed tokens per response (price model flat)", log=True)
        save(fig, "cost", PLOT_COST)
        for price in prices:
            if price == FLAT:
                continue
            est = any(r.get(f"cost_{price}_estimated") for r in rows)
            fig, ax = plt.subplots(figsize=(7, 4.5))
            _draw(ax, lines, names[0], f"cost_{price}_mean",
                  f"cost per response, {price} (uncached input tokens"
                  + ("; cache partly est." if est else "") + ")", log=True)
            save(fig, f"cost_{price}", cost_plot_name(price))
        fig, ax = plt.subplots(figsize=(7, 4.5))
        _draw(ax, lines, names[0], "seconds", "seconds per response", log=True)
        save(fig, "latency", PLOT_LATENCY)
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
        save(fig, "composition", PLOT_COMPOSITION)
    return written


def _nz(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _draw(ax, lines, name: str, xkey: str, xlabel: str, log: bool = False) -> None:
    """One curve per family; points without an x or a mean (no KL, no reward) are left out."""
    positive = True
    for label, rs in lines.items():
        rs = [r for r in rs if _finite(r.get(xkey)) and _finite(r.get(f"{name}_mean"))]
        if not rs:
            continue
        xs = [r[xkey] for r in rs]
        ys = [r[f"{name}_mean"] for r in rs]
        positive = positive and all(x > 0 for x in xs)
        ax.errorbar(xs, ys, yerr=[_nz(r[f"{name}_se"]) for r in rs], marker="o", capsize=3,
                    ls="-" if label.startswith(("VAS", "base")) else "--", label=label)
        for r, x, y in zip(rs, xs, ys):
            ax.annotate(_label(r), (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
    if log and positive:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{name} (mean ± s.e.)")
    if ax.get_legend_handles_labels()[0]:
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
