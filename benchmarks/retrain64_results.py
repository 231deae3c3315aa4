"""docs/training/retrain64/RESULTS.md and its plot: the value models retrained at 64 tokens
(`bash benchmarks/retrain64.sh`, plan fixed before: docs/training/retrain64/PLAN.md) against
the bundled ones, Best-of-N and the RL rows, all in docs/results/frontier_plain.

    python benchmarks/retrain64_results.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from frontier_results import by_setting, paired_diff
from rl_results import BON, closest_below, plain_vs_kl
from rl_results import mean_kl as kl

from vas_proxy.eval.files import RESULTS_FILE, read_records
from vas_proxy.eval.report import mean_se, pm

EVAL = ROOT / "docs/results/frontier_plain"
DOCS = ROOT / "docs/training/retrain64"
RUNS = ROOT / "runs/retrain64"
OLD = ["vas b=2 plain=1", "vas b=4 plain=1"]
NEW = ["vas b=2 plain64=1", "vas b=4 plain64=1"]
POS = "vas b=4 positivity64=1"
OTHERS = ["bon N=4 plain", "bon N=16 plain", "tuned dpo_b0.5", "tuned grpo"]
GOAL = {"plain": 0.6, "vader": 0.85}


def heldout() -> list[str]:
    """Old and new models on the same 80 held-out half-responses (revalidate.json)."""
    path = DOCS / "revalidate.json"
    if not path.is_file():
        return ["(held-out check not run yet: `bash benchmarks/retrain64.sh revalidate`)"]
    data = json.loads(path.read_text())
    out = [("| model | reward | half corr | within-prompt corr | half MSE ratio | final corr | "
            "goal (half corr) |"), "|---|---|---:|---:|---:|---:|---|"]
    for label, m in data.items():
        reward = "vader" if "vader" in label else "plain"
        name = label.split("@")[0] if "@" in label else f"{Path(label).name}64 (new)"
        name = name.replace("vader64", "positivity64")
        ratio = m["val_half_mse"] / m["val_half_baseline_mse"]
        met = "met" if m["val_half_corr"] >= GOAL[reward] else "not met"
        out.append(f"| {name} | {reward} | {m['val_half_corr']:.3f} | "
                   f"{m['val_half_within_corr']:.3f} | {ratio:.3f} | "
                   f"{m['val_final_corr']:.3f} | ≥ {GOAL[reward]}: {met} |")
    return out


def table(sets: dict) -> list[str]:
    out = ["| setting | n | plain | vader | KL (nats) | s / response |",
           "|---|---|---|---|---|---|"]
    for name in ["base"] + OLD + NEW + [POS] + OTHERS:
        if name not in sets:
            continue
        rs = list(sets[name].values())
        p, v = (mean_se([r["rewards"][k] for r in rs]) for k in ("plain", "vader"))
        bound = " (bound)" if name.startswith("bon") else ""
        sec = np.mean([r["seconds"] for r in rs])
        out.append(f"| {name} | {len(rs)} | {pm(*p)} | {pm(*v)} | {kl(sets[name]):.2f}{bound} | "
                   f"{sec:.1f} |")
    return out


def comparisons(sets: dict) -> list[str]:
    plain = lambda r: r["rewards"]["plain"]
    out = []
    for old, new in zip(OLD, NEW):
        if new not in sets:
            continue
        m, se, n = paired_diff(sets[new], sets[old], plain)
        out.append(f"- **{new}** − **{old}** (same β): Δ plain {pm(m, se)} over {n} pairs "
                   f"({m / se:+.1f} s.e.); KL {kl(sets[new]):.2f} vs {kl(sets[old]):.2f}.")
        for ref in ("bon N=16 plain", "tuned dpo_b0.5", "tuned grpo"):
            if ref in sets:
                m, se, n = paired_diff(sets[new], sets[ref], plain)
                out.append(f"  - − **{ref}** (KL {kl(sets[ref]):.2f}): Δ plain {pm(m, se)} "
                           f"({m / se:+.1f} s.e.)")
    # Added after the plan, once beta 2 had shown the two models at very different KL: each new
    # row against the row of each family with the largest KL not above its own (the RL
    # comparison's rule, docs/baselines/PLAN.md).
    for new in NEW:
        if new not in sets:
            continue
        for family in (["base"] + OLD, BON):
            ref = closest_below(sets, family, kl(sets[new]))
            if ref is not None:
                m, se, n = paired_diff(sets[new], sets[ref], plain)
                out.append(f"- At no less KL: **{new}** (KL {kl(sets[new]):.2f}) − "
                           f"**{ref}** (KL {kl(sets[ref]):.2f}): Δ plain {pm(m, se)} "
                           f"({m / se:+.1f} s.e.)")
    b16 = sets.get("bon N=16 plain")
    if b16 is not None:
        cands = [n for n in OLD + NEW if n in sets and kl(sets[n]) <= 1.84]
        ok = [n for n in cands if mean_se([plain(r) for r in sets[n].values()])[0]
              >= mean_se([plain(r) for r in b16.values()])[0]]
        out.append(f"- Goal (VAS at KL ≤ 1.84 reaches Best-of-16's mean plain): "
                   f"{'met by ' + ', '.join(ok) if ok else 'not met'} "
                   f"(rows at KL ≤ 1.84: {', '.join(cands) or 'none'}).")
    if POS in sets:
        m, se, n = paired_diff(sets[POS], sets["base"], lambda r: r["rewards"]["vader"])
        out.append(f"- **{POS}** − base: Δ vader {pm(m, se)} over {n} pairs "
                   f"({m / se:+.1f} s.e.), KL {kl(sets[POS]):.2f}.")
    if NEW[0] in sets:
        m, se, _ = paired_diff(sets[NEW[0]], sets[OLD[0]], plain)
        out.append(f"- Ship rule for `bundled:plain` (plain64 beats it at β 2 by > 2 s.e.): "
                   f"**{'replace' if m > 2 * se else 'keep'}**.")
    return out


def plot(sets: dict) -> str:
    plain_vs_kl(sets, [(["base"] + OLD, "VAS, bundled plain (32-token training)", "o-"),
                       (["base"] + NEW, "VAS, plain64 (this retrain)", "o-"),
                       (BON, "Best-of-N (KL: bound)", "s--")],
                [(t, t) for t in ("tuned dpo_b0.1", "tuned dpo_b0.5", "tuned grpo")],
                DOCS / "reward_vs_kl.png")
    return "![plain vs KL](reward_vs_kl.png)"


def main() -> None:
    sets = by_setting(read_records(EVAL / RESULTS_FILE))
    text = "\n".join([
        "# Retrained at 64 tokens: results",
        "",
        ("Made by `python benchmarks/retrain64_results.py` from `bash benchmarks/retrain64.sh` "
         "(plan: PLAN.md; what ran when and beside what: RUNLOG.md)."),
        "",
        "## Held out: old and new models on the same 80 half-responses (64 tokens)", "",
        *heldout(), "",
        ("## Guided: 64 held-out prompts × 2 draws, 64 tokens, llama-server "
         "(docs/results/frontier_plain)"), "",
        *table(sets), "", *comparisons(sets), "", plot(sets), ""])
    (DOCS / "RESULTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
