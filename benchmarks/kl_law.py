"""docs/training/kl_law/: how accurate a value model must be for VAS to match Best-of-16 at equal
KL, from the guided rows already measured (no new generation).

    python benchmarks/kl_law.py

Each row's effective ρ = gain / (sd_w·√(2·KL)) (vas_proxy/eval/efficiency.py, design §1.10),
and the KL its value model would need for Best-of-16's gain by the same law (an extrapolation
past the measured KL). The perfect-value reference is the exact tilt π0·exp(r/τ) on each
prompt's pool of 16 base samples (the optimum of reward − τ·KL, estimated on 16 samples, so its
KL stops at log 16, less with ties).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from vas_proxy.eval.efficiency import bon_pools, kl_to_reach, within_sd
from vas_proxy.eval.files import RESULTS_FILE, read_records
from vas_proxy.eval.report import pm, summarise

OUT = ROOT / "docs/training/kl_law"
BUDGET = 1.84  # Best-of-16's KL bound, log 16 − 15/16
# (directory, reward, the guided rows whose value model was trained on that reward)
SOURCES = [
    ("docs/results/frontier", "vader", ["positivity"]),
    ("docs/results/frontier_plain", "plain", ["plain", "plain64", "plainR", "plainRes",
                                                "plainResW", "plainAll"]),
    ("docs/training/unseen/asks_eval", "py:unseen_rewards:asks", ["asks", "asks2", "asks3"]),
    ("docs/training/unseen/diversity_eval", "py:unseen_rewards:diversity",
     ["diversity", "diversityR"]),
    ("docs/training/personal/eval", "interests:gardener", ["personal"]),
    # the reward itself as the value, beside the bundled model, with Best-of-N by vader on the
    # same llama-server pairs (docs/training/prefix/)
    ("docs/training/unseen/asks_eval", "vader", ["positivity", "vaderR", "posRes"],
     "llama-server"),
]


def short(reward: str) -> str:
    return reward.rsplit(":", 1)[-1] if reward.startswith("py:") else reward


def tilt_curve(pool: dict) -> tuple[np.ndarray, np.ndarray]:
    """(KL, gain) of the exact tilt π0·exp(r/τ) on each pool, averaged over pools."""
    kls, gains = [], []
    for tau in np.geomspace(0.01, 10, 60):
        k, g = [], []
        for s in pool.values():
            r = np.asarray(s)
            w = np.exp((r - r.max()) / tau)
            w /= w.sum()
            k.append(float(np.sum(w * np.log(np.maximum(w * len(r), 1e-300)))))
            g.append(float(w @ r - r.mean()))
        kls.append(np.mean(k))
        gains.append(np.mean(g))
    return np.asarray(kls), np.asarray(gains)


def at_kl(curve: tuple[np.ndarray, np.ndarray], kl: float) -> float:
    """The tilt's gain at `kl`; nan beyond the largest KL the pools can show (log 16, less
    with ties)."""
    order = np.argsort(curve[0])
    if kl > curve[0].max():
        return math.nan
    return float(np.interp(kl, curve[0][order], curve[1][order]))


def rows_of(directory: str, reward: str, values: list[str], where: str = "") -> dict:
    """The eval's own summary rows (gain, KL, effective ρ, Best-of-N's exact KL) for the guided
    rows whose value models were all trained on `reward`, and Best-of-4 and -16."""
    records = read_records(ROOT / directory / RESULTS_FILE)
    out = {"reward": short(reward) + (f" ({where})" if where else ""),
           "sd": within_sd(records, reward),
           "tilt": tilt_curve(bon_pools(records, reward)), "rows": []}
    for row in summarise(records, [reward]):
        name = row["setting"]
        guided = row["method"] == "vas" and all(w.split("=")[0] in values
                                                for w in name.split()[2:])
        bon = (row["method"] == "bon" and row["best_of"] in (4, 16)
               and row["bon_reward"] == reward)  # Best-of-N picked by another reward: not it
        if not (guided or bon):
            continue
        g, g_se, kl, rho = (row[f"{reward}_gain"], row[f"{reward}_gain_se"], row["kl_mean"],
                            row[f"{reward}_rho"])
        rel_kl = row["kl_se"] / (2 * kl) if guided else 0.0
        out["rows"].append({"name": name.replace("py:unseen_rewards:", ""),
                            "kind": "VAS" if guided else "BoN", "kl": kl, "kl_se": row["kl_se"],
                            "exact_kl": row["kl_exact"], "gain": g, "gain_se": g_se, "rho": rho,
                            "rho_se": abs(rho) * math.hypot(g_se / g if g else math.inf, rel_kl)})
    bon16 = next((r for r in out["rows"] if r["name"].startswith("bon N=16")), None)
    for r in out["rows"]:
        r["kl_needed"] = (kl_to_reach(bon16["gain"], r["gain"], r["kl"])
                          if bon16 and r["kind"] == "VAS" else math.nan)
    out["rows"].sort(key=lambda r: (r["kind"] != "BoN", r["kl"]))
    return out


def table(results: list[dict]) -> list[str]:
    lines = [("| reward | sd_w | row | KL (nats) | gain over base | effective ρ | KL to reach "
              "Best-of-16 at this ρ | perfect values' gain at this KL |"),
             "|---|---|---|---|---|---|---|---|"]
    for res in results:
        for r in res["rows"]:
            bon = r["kind"] == "BoN"
            kl = (f"≤ {r['kl']:.2f} (bound; {r['exact_kl']:.2f} on the pool)" if bon
                  else pm(r["kl"], r["kl_se"], 2))
            t = at_kl(res["tilt"], r["kl"])
            tilt = "beyond the pool" if math.isnan(t) else f"{t:+.3f}"
            need = "–" if math.isnan(r["kl_needed"]) else f"{r['kl_needed']:.1f}"
            lines.append(f"| {res['reward']} | {res['sd']:.3f} | {r['name']} | {kl} | "
                         f"{pm(r['gain'], r['gain_se'], 3)} | {pm(r['rho'], r['rho_se'], 2)} | "
                         f"{need} | {tilt} |")
    return lines


def plot(results: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, 4, figsize=(17, 8), sharey=True)
    axes = list(grid.flat)
    for ax in axes[len(results):]:
        ax.axis("off")
    for ax, res in zip(axes, results):
        k, g = res["tilt"]
        keep = k <= 2.7
        ax.plot(k[keep], g[keep] / res["sd"], "k-", lw=1, label="perfect values (tilt)")
        x = np.linspace(0, 10, 100)
        for r in res["rows"]:
            style = "s" if r["kind"] == "BoN" else "o"
            ax.errorbar([r["kl"]], [r["gain"] / res["sd"]], yerr=[r["gain_se"] / res["sd"]],
                        fmt=style, capsize=3, label=f"{r['name']} (ρ {r['rho']:.2f})")
            if r["kind"] == "BoN":
                ax.plot([r["exact_kl"]], [r["gain"] / res["sd"]], "s", mfc="none", color="grey")
        for rho in (0.25, 0.5, 1.0):
            ax.plot(x, rho * np.sqrt(2 * x), ":", color="grey", lw=0.8)
            ax.annotate(f"ρ={rho:g}", (x[-1], rho * math.sqrt(2 * x[-1])), fontsize=7,
                        color="grey", ha="right", va="bottom")
        ax.axvline(BUDGET, color="red", lw=0.6, alpha=0.5)
        ax.set_title(res["reward"])
        ax.set_xlim(0, 10)
        ax.set_xlabel("KL to the base (nats per response)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in (axes[0], axes[4]):
        ax.set_ylabel("gain over base / sd_w")
    axes[-1].text(0, 0.5, "dotted: gain = ρ·sd_w·sqrt(2·KL)\nhollow square: Best-of-N at its\n"
                  "exact KL on the pool (ties counted)\nred line: Best-of-16's bound, 1.84 nats",
                  fontsize=9, va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    results = [rows_of(*s) for s in SOURCES if (ROOT / s[0] / RESULTS_FILE).is_file()]
    OUT.mkdir(parents=True, exist_ok=True)
    plot(results, OUT / "gain_vs_kl.png")
    head = ["# Reward per nat: every guided row measured", "",
            ("Made by `python benchmarks/kl_law.py` from the eval directories' results.jsonl (no "
            "new generation); the law and its terms: docs/design.md §1.10. Effective ρ = gain / "
            "(sd_w·√(2·KL)); Best-of-N's at its bound, with its exact KL on the pools (ties "
            "counted) beside it. 'KL to reach Best-of-16' extrapolates by the same law. 'Perfect "
            "values': the exact tilt π0·exp(r/τ) on each prompt's 16 base samples at the row's "
            "KL ('beyond the pool' past what 16 samples can show)."), "",
            "![gain vs KL](gain_vs_kl.png)", ""]
    text = "\n".join(head + table(results)) + "\n"
    (OUT / "RESULTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
