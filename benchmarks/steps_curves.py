"""Held-out half-response correlation against optimiser steps, one panel per reward, one line
per run (docs/training/steps/): does the held-out figure follow steps or epochs?

Reads each run's metrics.jsonl (`train/report.read_metrics`, the validations after each epoch,
the untrained step 0 included); nothing is re-measured.

    python benchmarks/steps_curves.py --root runs/ablation --variants half6,half12,epochs6 \
        --out docs/training/steps/curves.png [--json docs/training/steps/curves.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vas_proxy.train.report import read_metrics


def curves(root: Path, variants: list[str]) -> dict[str, dict[str, list]]:
    """{reward dir: {variant: [(step, epoch, half corr, n)]}} for the runs that exist."""
    out: dict[str, dict[str, list]] = {}
    for reward in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "samples"):
        for v in variants:
            m = reward / v / "metrics.jsonl"
            if m.is_file():
                out.setdefault(reward.name, {})[v] = [
                    (r["step"], r.get("epoch"), r.get("val_half_corr"), r.get("val_half_n"))
                    for r in read_metrics(m) if r.get("kind") == "validation"]
    return out


def plot(data: dict, path: Path) -> None:
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
    ap.add_argument("--variants", default="half6,half12,epochs6")
    ap.add_argument("--out", default="docs/training/steps/curves.png")
    ap.add_argument("--json")
    a = ap.parse_args()
    data = curves(Path(a.root), a.variants.split(","))
    plot(data, Path(a.out))
    if a.json:
        Path(a.json).write_text(json.dumps(data, indent=1) + "\n")
    for reward, runs in data.items():
        for v, pts in runs.items():
            print(reward, v, " ".join(f"{p[0]}:{p[2]:.2f}" for p in pts if p[2] is not None))


if __name__ == "__main__":
    main()
