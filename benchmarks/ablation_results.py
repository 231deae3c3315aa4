"""The recipe ablations' table (docs/training/ablation/RESULTS.md) from their run directories.

Reads each finished variant's checkpoint metadata (its last held-out validation and verdict)
and its train.log's wall time, and plots the held-out correlation of the runs it read against
optimiser steps (curves.png, from their metrics.jsonl); nothing is re-measured here. Rows
already in results.json whose run directories are gone are kept (a run on disk replaces its
row), and RESULTS.md's sections after the generated table (its addenda) are kept.

    python benchmarks/ablation_results.py [--root runs/ablation] [--out docs/training/ablation]
        [--variants epochs6,...]   # read only these variants' run directories
        [--title "..."]            # RESULTS.md's title (another study on the same runs)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from vas_proxy.train.report import read_metrics
from vas_proxy.train.verdict import quality


def rows(root: Path, variants: set[str] | None = None) -> list[dict]:
    out = []
    for config in sorted(root.glob("*/*/vas_value.json")):
        run = config.parent
        if run.parent.name == "samples" or (variants and run.name not in variants):
            continue
        meta = json.loads(config.read_text())["metadata"]
        v, args = meta.get("validation") or {}, meta.get("args") or {}
        log = (run / "train.log").read_text() if (run / "train.log").is_file() else ""
        wall = re.findall(r"([\d.]+) s wall", log)
        out.append({"reward": args.get("reward"), "variant": run.name,
                    "half_corr": v.get("val_half_corr"), "half_n": v.get("val_half_n"),
                    "half_ratio": _ratio(v, "val_half"), "final_corr": v.get("val_final_corr"),
                    "final_ratio": _ratio(v, "val_final"),
                    "verdict": (meta.get("verdict") or {}).get("label"),
                    "steps": meta.get("step"), "minutes": float(wall[-1]) / 60 if wall else None,
                    "reward_std": meta.get("reward_std"), "dir": str(run)})
    return out


def _ratio(v: dict, prefix: str):
    q = quality(v, prefix)  # the same figure train's verdict judges
    return q["ratio"] if q else None


def _f(x, fmt=".3f"):
    return "–" if x is None else format(x, fmt)


def table(rs: list[dict]) -> str:
    lines = ["| reward | variant | half corr | half MSE ratio | final corr | final MSE ratio | "
             "verdict | steps | minutes |", "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in sorted(rs, key=lambda r: (r["reward"], r["variant"] != "recipe", r["variant"])):
        lines.append(f"| {r['reward']} | {r['variant']} | {_f(r['half_corr'])} | "
                     f"{_f(r['half_ratio'])} | {_f(r['final_corr'])} | {_f(r['final_ratio'])} | "
                     f"{r['verdict']} | {r['steps']} | {_f(r['minutes'], '.1f')} |")
    return "\n".join(lines) + "\n"


def plot(rs: list[dict], path: Path) -> None:
    """Grouped bars: held-out half-response correlation per reward and variant (95% CI)."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from vas_proxy.train.verdict import corr_interval

    rewards = sorted({r["reward"] for r in rs})
    variants = sorted({r["variant"] for r in rs}, key=lambda v: (v != "recipe", v))
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(2.2 * len(rewards) + 2, 4))
    for j, var in enumerate(variants):
        xs, ys, lo, hi = [], [], [], []
        for i, rew in enumerate(rewards):
            hit = [r for r in rs if r["reward"] == rew and r["variant"] == var]
            if hit and hit[0]["half_corr"] is not None:
                c = hit[0]["half_corr"]
                ci = corr_interval(c, hit[0]["half_n"]) or (c, c)
                xs.append(i + (j - (len(variants) - 1) / 2) * width)
                ys.append(c)
                lo.append(c - ci[0])
                hi.append(ci[1] - c)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=var)
    ax.set_xticks(range(len(rewards)), rewards)
    ax.set(ylabel="held-out half-response correlation", title="recipe ablations (95% CI)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def curves(rs: list[dict]) -> dict[str, dict[str, list]]:
    """{reward: {variant: [(step, epoch, half corr, n)]}}: each run's validations after each
    epoch (metrics.jsonl), to see whether the held-out figure follows steps or epochs."""
    out: dict[str, dict[str, list]] = {}
    for r in sorted(rs, key=lambda r: (r["reward"], r["variant"])):
        m = Path(r["dir"]) / "metrics.jsonl"
        if m.is_file():
            out.setdefault(r["reward"], {})[r["variant"]] = [
                (v["step"], v.get("epoch"), v.get("val_half_corr"), v.get("val_half_n"))
                for v in read_metrics(m) if v.get("kind") == "validation"]
    return out


def plot_curves(data: dict, path: Path) -> None:
    """One panel per reward: each run's held-out half-response correlation by step."""
    if not data:
        return
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    variants = sorted({v for runs in data.values() for v in runs})
    colour = {v: f"C{i}" for i, v in enumerate(variants)}  # one colour per variant throughout
    fig, axes = plt.subplots(1, len(data), figsize=(4.2 * len(data), 3.6), sharey=True,
                             squeeze=False)
    for ax, (reward, runs) in zip(axes[0], data.items()):
        for v, pts in runs.items():
            pts = [p for p in pts if p[2] is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", ms=3,
                        color=colour[v], label=f"{v} ({pts[-1][3]} halves)")
        ax.set(title=reward, xlabel="optimiser steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0][0].set_ylabel("held-out half-response corr")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="runs/ablation")
    ap.add_argument("--out", default="docs/training/ablation")
    ap.add_argument("--variants", help="comma-separated: read only these variants' runs")
    ap.add_argument("--title", default="Recipe ablations: results")
    a = ap.parse_args()
    root, out = Path(a.root), Path(a.out)
    fresh = rows(root, set(a.variants.split(",")) if a.variants else None)
    rs, kept = fresh, out / "results.json"
    if kept.is_file():
        read = {(r["reward"], r["variant"]) for r in fresh}
        rs = [r for r in json.loads(kept.read_text())
              if (r["reward"], r["variant"]) not in read] + fresh
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for r in fresh:  # the runs' own logs travel with the table
        log = Path(r["dir"]) / "train.log"
        if log.is_file():
            shutil.copy2(log, out / "logs" / f"{Path(r['dir']).parent.name}__{r['variant']}.log")
    (out / "results.json").write_text(json.dumps(rs, indent=2) + "\n")
    plot(rs, out / "ablation.png")
    plot_curves(curves(fresh), out / "curves.png")
    results = out / "RESULTS.md"
    addenda = results.read_text().partition("\n## ")[1:] if results.is_file() else ("", "")
    results.write_text(
        f"# {a.title}\n\nMade by `python benchmarks/ablation_results.py` from the "
        "runs of `bash benchmarks/recipe_ablation.sh` (plan: PLAN.md). Held-out: 8 prompts' "
        "responses; half = V(prompt + half) against the mean reward of 4 completions of the "
        "half; ratio = MSE / the mean predictor's MSE (1 knows nothing).\n\n" + table(rs)
        + "\n![half-response correlation per variant](ablation.png)\n" + "".join(addenda))
    print(table(rs))


if __name__ == "__main__":
    main()
