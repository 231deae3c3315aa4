"""docs/training/perfect/: what VAS would reach with *perfect* values, against Best-of-N at equal KL.

    python benchmarks/perfect_values.py                       # the plan's configuration
    python benchmarks/perfect_values.py --depth 4 --alpha 1   # a sensitivity run

Issue 13 says a perfect value function would put VAS at or above Best-of-N at every KL. VAS
tilts each step by exp(β·Q), Q the *expected* final reward under the base policy (what TD(λ)
fits). The optimum of reward − KL/β is the whole-response tilt p·exp(β·r); per step that is
p·E[exp(β·r) | s, a], the "soft" value, and exp(β·E[r | s, a]) agrees with it only to first
order in β. On random token trees, where every value is exact, this measures what no value
training can close, for reward shapes like ours. Every tree is a prompt; one β for all of them,
so that the mean KL equals the budget (as `calibrate` picks β). Best-of-N is exact on each
tree's leaves. No top-k truncation.

The reward of a leaf is a function of a dense latent score (a N(0, 1/depth) term per token,
summed): itself (`dense`), a rare event (`sparse`, 5% of base responses), a risky or safe first
token (`uneven`), or, for `vader` and `plain`, the measured distribution of one prompt's 16 base
rewards (Best-of-16's pool in docs/results/frontier*/), read at the latent's quantile.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy.stats import norm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vas_proxy.eval.efficiency import bon_pools
from vas_proxy.eval.files import RESULTS_FILE, read_records

OUT = ROOT / "docs/training/perfect"
SHAPES = ("dense", "sparse", "uneven", "vader", "plain")
POOLS = {"vader": "docs/results/frontier", "plain": "docs/results/frontier_plain"}
# the two tilts compared with Best-of-N: VAS with perfect Q, and the optimum
TILTS = {"soft": lambda t, beta: t.soft(beta), "vas": lambda t, beta: t.step(beta)}


class Tree:
    """One prompt: per-level base laws (level t: B**t states × B tokens) and leaf rewards."""

    def __init__(self, rng, b: int, depth: int, alpha: float, shape: str, pool=None):
        self.levels = [rng.dirichlet([alpha] * b, size=b**t) for t in range(depth)]
        z = np.zeros(1)
        for t in range(depth):
            z = (z[:, None] + rng.normal(0, 1 / math.sqrt(depth), (b**t, b))).reshape(-1)
        if shape == "dense":
            r = z
        elif shape == "sparse":
            r = (z > norm.ppf(0.95)).astype(float)
        elif shape == "uneven":  # the first token opens a risky answer (sd × 2) or a safe one
            r = z * np.where(np.arange(b**depth) // b ** (depth - 1) < b // 2, 2.0, 0.3)
        else:  # a measured pool, read at the latent's quantile (linear between its values)
            r = np.quantile(np.asarray(pool), norm.cdf(z))
        self.r, self.b = r, b
        self.lp = np.zeros(1)
        for p in self.levels:
            self.lp = (self.lp[:, None] + np.log(p)).reshape(-1)
        self.q, v = [None] * depth, r  # exact Q(s, a) = E_p[r | s, a] per level
        for t in reversed(range(depth)):
            self.q[t] = v.reshape(b**t, b)
            v = (self.levels[t] * self.q[t]).sum(1)

    def step(self, beta: float, qs=None, soft01: bool = False) -> np.ndarray:
        """Leaf log-probabilities of a step-wise tilt by values `qs` (default: the exact ones):
        VAS's p·exp(β·Q), or with `soft01` the soft form of a 0/1 reward, p·(1 + (e^β − 1)·Q)
        (the optimum when Q is exact)."""
        lq, log_eb = np.zeros(1), beta + np.log1p(-np.exp(-beta))  # log(e^β − 1)
        for p, q in zip(self.levels, qs or self.q):
            if soft01:
                with np.errstate(divide="ignore"):
                    x = np.log(p) + np.logaddexp(0.0, log_eb + np.log(q))
            else:
                x = np.log(p) + beta * q
            x -= x.max(1, keepdims=True)
            x -= np.log(np.exp(x).sum(1, keepdims=True))
            lq = (lq[:, None] + x).reshape(-1)
        return lq

    def soft(self, beta: float) -> np.ndarray:
        """The whole-response tilt p·exp(β·r): the step-wise tilt by perfect soft values."""
        x = self.lp + beta * (self.r - self.r.max())
        return x - np.log(np.exp(x).sum())

    def gain_kl(self, lq: np.ndarray) -> tuple[float, float]:
        q, p = np.exp(lq), np.exp(self.lp)
        return float((q - p) @ self.r), float(q @ (lq - self.lp))

    def bon(self, n: int) -> tuple[float, float]:
        """Exact Best-of-n: it picks reward level v with F(v)^n − F(v⁻)^n, shared within the
        level in proportion to p (so ties pay less than the bound log n − (n−1)/n)."""
        levels, inv = np.unique(self.r, return_inverse=True)
        pv = np.bincount(inv, weights=np.exp(self.lp), minlength=len(levels))
        hi = np.cumsum(pv)
        wv = hi**n - (hi - pv) ** n
        ok = wv > 0
        return float((wv - pv) @ levels), float(wv[ok] @ np.log(wv[ok] / pv[ok]))


def solve(trees: list[Tree], tilt, budget: float) -> dict:
    """One β for every tree, the mean KL equal to the budget (bisection in log β); `tilt(tree,
    β)` gives a tree's leaf log-probabilities."""

    def at(beta):
        return [t.gain_kl(tilt(t, beta)) for t in trees]

    lo, hi = 1e-3, 1e4
    for _ in range(50):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if np.mean([k for _, k in at(mid)]) < budget else (lo, mid)
    each = at(math.sqrt(lo * hi))
    return {"beta": math.sqrt(lo * hi), "gains": [g for g, _ in each],
            "kl": float(np.mean([k for _, k in each]))}


def noisy_binary(a, sigmas=(0.0, 0.5, 1.0), additive: bool = False) -> list[dict]:
    """`sparse` with values off by a log-normal factor (or, `additive`, by σ·ε, addendum 2):
    the linear tilt against the soft 0/1 form, each at Best-of-16's exact KL (addendum 1)."""
    trees, rows = make_trees("sparse", a), []
    budget = float(np.mean([t.bon(16)[1] for t in trees]))
    bon = np.array([t.bon(16)[0] for t in trees])
    for sigma in sigmas:
        rng = np.random.default_rng([a.seed, 99, int(sigma * 100)])
        noisy = {id(t): [np.clip(q + sigma * rng.standard_normal(q.shape), 0.0, 1.0)
                         if additive else
                         np.minimum(1.0, q * np.exp(sigma * rng.standard_normal(q.shape)))
                         for q in t.q] for t in trees}
        row = {"sigma": sigma, "additive": additive, "budget": budget, "bon": float(bon.mean())}
        for soft in (False, True):
            s = solve(trees, lambda t, b, soft=soft, v=noisy: t.step(b, v[id(t)], soft), budget)
            d = np.array(s["gains"]) - bon
            row["soft" if soft else "linear"] = {
                "beta": s["beta"], "gain": float(np.mean(s["gains"])),
                "minus_bon": float(d.mean()), "se": float(d.std(ddof=1) / math.sqrt(len(d)))}
        rows.append(row)
    return rows


def make_trees(shape: str, a) -> list[Tree]:
    rng = np.random.default_rng([a.seed, SHAPES.index(shape)])
    pools = [None] * a.trees
    if shape in POOLS:
        d = ROOT / POOLS[shape]
        got = bon_pools(read_records(d / RESULTS_FILE), shape)
        pools = [got[k] for k in sorted(got)][: a.trees]
    return [Tree(rng, a.branching, a.depth, a.alpha, shape, pool) for pool in pools]


def run(shape: str, a) -> dict:
    trees = make_trees(shape, a)
    rows = []
    for n in (4, 16):
        bon = [t.bon(n) for t in trees]
        bound, exact = math.log(n) - (n - 1) / n, float(np.mean([k for _, k in bon]))
        row = {"n": n, "bound": bound, "bon_kl": exact, "bon": float(np.mean([g for g, _ in bon]))}
        for kind in ("soft", "vas"):
            s = solve(trees, TILTS[kind], bound)
            d = np.array(s["gains"]) - np.array([g for g, _ in bon])
            row[kind] = {"beta": s["beta"], "kl": s["kl"], "gain": float(np.mean(s["gains"])),
                         "minus_bon": float(d.mean()),
                         "se": float(d.std(ddof=1) / math.sqrt(len(d)))}
        if exact < bound - 0.01:  # ties: Best-of-N pays less than its bound; VAS at that KL too
            s = solve(trees, TILTS["vas"], exact)
            d = np.array(s["gains"]) - np.array([g for g, _ in bon])
            row["vas_at_exact"] = {"beta": s["beta"], "gain": float(np.mean(s["gains"])),
                                   "minus_bon": float(d.mean()),
                                   "se": float(d.std(ddof=1) / math.sqrt(len(d)))}
        rows.append(row)
    curves = {kind: [[t.gain_kl(tilt(t, beta)) for t in trees]
                     for beta in np.geomspace(0.05, 60, 40)] for kind, tilt in TILTS.items()}
    bons = [[t.bon(n) for t in trees] for n in (2, 4, 8, 16, 32)]
    mean = lambda pts: [[float(np.mean([k for _, k in p])), float(np.mean([g for g, _ in p]))]
                        for p in pts]
    return {"shape": shape, "trees": len(trees), "rows": rows,
            "curves": {k: mean(v) for k, v in curves.items()}, "bon_points": mean(bons)}


def table(results: list[dict]) -> str:
    out = [("| reward shape | N | Best-of-N: exact KL, gain | perfect soft values at the bound:"
           " gain (β) | VAS, perfect values, at the bound: gain (β) | VAS − Best-of-N ± s.e."
           " over trees | VAS ÷ Best-of-N |"), "|---" * 7 + "|"]
    for res in results:
        for w in res["rows"]:
            s, v = w["soft"], w["vas"]
            out.append(f"| {res['shape']} | {w['n']} | {w['bon_kl']:.2f}, {w['bon']:.3f} |"
                       f" {s['gain']:.3f} ({s['beta']:.2f}) | {v['gain']:.3f} ({v['beta']:.2f}) |"
                       f" {v['minus_bon']:+.3f} ± {v['se']:.3f} | {v['gain'] / w['bon']:.2f} |")
    exact = [f"- {res['shape']}, N = {w['n']}: at Best-of-N's exact KL ({w['bon_kl']:.2f}),"
             f" VAS with perfect values gains {w['vas_at_exact']['gain']:.3f}"
             f" ({w['vas_at_exact']['minus_bon']:+.3f} ± {w['vas_at_exact']['se']:.3f})"
             for res in results for w in res["rows"] if "vas_at_exact" in w]
    return "\n".join(out + ([""] + exact if exact else []))


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.2))
    for ax, res in zip(axes, results):
        for kind, style in (("soft", "k-"), ("vas", "C0-")):
            k, g = zip(*res["curves"][kind])
            ax.plot(k, g, style, label={"soft": "optimal tilt", "vas": "VAS, perfect Q"}[kind])
        k, g = zip(*res["bon_points"])
        ax.plot(k, g, "C3o", label="Best-of-2..32 (exact KL)")
        ax.axvline(math.log(16) - 15 / 16, color="grey", lw=0.5)
        ax.set(title=res["shape"], xlabel="KL to base (nats)", xlim=(0, 3.5))
    axes[0].set_ylabel("reward gain over base")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", type=int, default=32, help="trees (prompts) per shape")
    ap.add_argument("--branching", type=int, default=4)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of each"
                    " step's base law (small: peaked, as a language model's usually is)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the output files (sensitivity runs)")
    a = ap.parse_args()
    results = [run(s, a) for s in SHAPES]
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {k: getattr(a, k) for k in ("trees", "branching", "depth", "alpha", "seed")}
    (OUT / f"results{a.tag}.json").write_text(json.dumps({"settings": meta, "shapes": results})
                                              + "\n")
    text = table(results)
    (OUT / f"table{a.tag}.md").write_text(f"settings: {meta}\n\n{text}\n")
    plot(results, OUT / f"perfect{a.tag}.png")
    print(text)
    if not a.tag:
        noisy = noisy_binary(a) + noisy_binary(a, (0.02, 0.05, 0.1), additive=True)
        (OUT / "noisy_binary.json").write_text(json.dumps(noisy, indent=1) + "\n")
        for r in noisy:
            print(f"sparse, {'additive ' if r['additive'] else ''}σ {r['sigma']}: Best-of-16 {r['bon']:.3f} at {r['budget']:.2f} nats;"
                  + "".join(f" {k} {r[k]['gain']:.3f} ({r[k]['minus_bon']:+.3f} ±"
                            f" {r[k]['se']:.3f}, β {r[k]['beta']:.2f});"
                            for k in ("linear", "soft")))


if __name__ == "__main__":
    main()
