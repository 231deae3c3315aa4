"""docs/baselines/RESULTS.md and its plots: VAS vs RL vs Best-of-N on `plain`, from the rows
`benchmarks/rl_baselines.sh` added to docs/results/frontier_plain (docs/baselines/PLAN.md says
what was fixed before they ran) and the tuned models' own records (runs/rl/*/baseline.json).

    python benchmarks/rl_results.py [--no-forgetting]   # also the README block between markers

--no-forgetting reuses docs/baselines/forgetting.json from the last full run.
Forgetting needs the tuned adapters (runs/rl/NAME/adapter) and takes ~1 min per model on 2
cores: the base rows' 128 responses scored under each tuned model and the base.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from frontier_results import by_setting, paired_diff, record_cost

from vas_proxy.eval.files import RESULTS_FILE, read_records
from vas_proxy.eval.report import mean_se, pm
from vas_proxy.prices import parse_prices

EVAL = ROOT / "docs/results/frontier_plain"
RUNS = ROOT / "runs/rl"
DOCS = ROOT / "docs/baselines"
README = ROOT / "README.md"
MARK = ("<!-- rl-baselines:start -->", "<!-- rl-baselines:end -->")
PRICE = "out4-prefix"
VAS = ["base", "vas b=2 plain=1", "vas b=4 plain=1"]
BON = ["bon N=1 plain", "bon N=2 plain", "bon N=4 plain", "bon N=8 plain", "bon N=16 plain"]
MIX = "vas b=4 plain=0.5 positivity=0.5"
TUNED = ["dpo_b0.1", "dpo_b0.5", "grpo", "dpo_mix"]


def _sampling_minutes() -> float:
    """Wall time of the shared rollouts (runs/rl/sample.log's `N s wall` line)."""
    for line in (RUNS / "sample.log").read_text().splitlines():
        if line.endswith("KiB peak") and " s wall" in line:
            return float(line.split(" s wall")[0]) / 60
    return float("nan")


SAMPLING_MIN = _sampling_minutes() if (RUNS / "sample.log").is_file() else float("nan")


def kl_of(r: dict) -> float:
    return float(r["kl"]) if r.get("kl") is not None else float("nan")


def mean_kl(rows: dict) -> float:
    """A setting's mean KL per response (its rows: {(prompt, draw): record})."""
    return float(np.mean([kl_of(r) for r in rows.values()]))


def closest_below(sets: dict, names: list[str], kl: float) -> str | None:
    """The setting among `names` with the largest mean KL not above `kl` (the plan's rule for
    comparing at equal KL), or None."""
    below = [n for n in names if n in sets and mean_kl(sets[n]) <= kl]
    return max(below, key=lambda n: mean_kl(sets[n])) if below else None


def plain_vs_kl(sets: dict, curves: list[tuple[list[str], str, str]],
                points: list[tuple[str, str]], path: Path) -> None:
    """Mean plain ± s.e. against mean KL: `curves` (setting names, label, style) as lines,
    `points` (setting, label) as diamonds; settings not in `sets` are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def plain(name):
        return mean_se([r["rewards"]["plain"] for r in sets[name].values()])

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for names, label, style in curves:
        names = [n for n in names if n in sets]
        ms = [plain(n) for n in names]
        ax.errorbar([mean_kl(sets[n]) for n in names], [m for m, _ in ms],
                    yerr=[s for _, s in ms], fmt=style, capsize=3, label=label)
    for name, label in points:
        if name in sets:
            m, s = plain(name)
            ax.errorbar([mean_kl(sets[name])], [m], yerr=[s], fmt="D", capsize=3, label=label)
    save_figure(fig, ax, "KL to the base (nats per response)", "plain (mean ± s.e.)", path)


def save_figure(fig, ax, xlabel: str, ylabel: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rows_table(sets: dict, metas: dict, forget: dict) -> list[str]:
    price = parse_prices(PRICE)[0]
    names = VAS + ["bon N=4 plain", "bon N=16 plain"] + ([MIX] if MIX in sets else []) + \
        [f"tuned {t}" for t in TUNED if f"tuned {t}" in sets]
    out = ["| method | n | plain | vader | KL (nats) | calls | cost out4-prefix | s / response "
           "| training | log-lik. of base text (Δ nats/token) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        rs = list(sets[name].values())
        plain, vader = (mean_se([r["rewards"][k] for r in rs]) for k in ("plain", "vader"))
        kl = mean_se([kl_of(r) for r in rs])
        kind = rs[0].get("kl_kind")
        c = mean_se([record_cost(r, price) for r in rs])
        train, fg = "–", "0" if name == "base" else "0 (weights untouched)"
        if name.startswith("tuned"):
            m = metas[name.split(" ", 1)[1]]
            cost = m["cost"]
            if cost["pairs"]:  # DPO: the shared black-box sampling is its cost too
                train = (f"{cost['train_seconds'] / 60:.1f} min + {SAMPLING_MIN:.1f} min "
                         f"sampling; {cost['base_rollouts']} rollouts")
            else:
                train = (f"{cost['train_seconds'] / 60:.1f} min; {cost['policy_samples']} "
                         "own samples")
            f = forget.get(name.split(" ", 1)[1])
            fg = pm(*f) if f else "not measured"
        if name.startswith("vas"):
            train = "bundled `plain`: 1254 rollouts of 32 tokens (time not recorded)"
            if "positivity" in name:
                train = "bundled `plain` and `positivity` (3184 rollouts)"
        out.append(f"| {name} | {len(rs)} | {pm(*plain)} | {pm(*vader)} | "
                   f"{pm(*kl, 2)}{' (bound)' if kind == 'bound' else ''} | "
                   f"{np.mean([r['upstream_calls'] for r in rs]):.1f} | {pm(*c, 0)} | "
                   f"{np.mean([r['seconds'] for r in rs]):.1f} | {train} | {fg} |")
    return out


def versus(sets: dict) -> list[str]:
    """Per RL row: the VAS row with the largest KL not above its KL, paired Δ plain."""
    out = []
    for t in TUNED:
        name = f"tuned {t}"
        if name not in sets or t == "dpo_mix":  # a mixture: the composition plot's, not this
            continue
        kl = mean_kl(sets[name])
        match = closest_below(sets, VAS, kl)
        m, se, n = paired_diff(sets[match], sets[name], lambda r: r["rewards"]["plain"])
        verdict = ("VAS > RL" if m > 2 * se else "VAS ≥ RL (not significantly worse)"
                   if m >= -2 * se else "RL > VAS")
        out.append(f"- **{t}** (KL {kl:.2f}) against **{match}** "
                   f"(KL {mean_kl(sets[match]):.2f}): Δ plain (VAS − RL) = {pm(m, se)} "
                   f"over {n} pairs: {verdict}.")
    return out


def forgetting(sets: dict) -> dict[str, tuple[float, float]]:
    """Δ mean log-likelihood per token (tuned − base) of the base rows' responses."""
    from vas_proxy.assets import smollm2_gguf
    from vas_proxy.baseline.scorer import TunedScorer
    from vas_proxy.templates import from_gguf

    template = from_gguf(str(smollm2_gguf()))
    base = list(sets["base"].values())
    out = {}
    for t in TUNED:
        if not (RUNS / t / "adapter").is_dir():
            continue
        scorer = TunedScorer(RUNS / t / "adapter")
        deltas = []
        for r in base:
            prompt = template.render([{"role": "user", "content": r["prompt"]}])
            lq, n = scorer.loglik(prompt, r["response"], tuned=True)
            lp, _ = scorer.loglik(prompt, r["response"], tuned=False)
            if n:
                deltas.append((lq - lp) / n)
        out[t] = mean_se(deltas)
        print(f"forgetting {t}: {pm(*out[t])} nats/token", flush=True)
    return out


def plots(sets: dict) -> list[str]:
    plain_vs_kl(sets, [(VAS, "VAS (β 0, 2, 4; one value model)", "o-"),
                       (BON, "Best-of-N (KL: bound)", "s--")],
                [(f"tuned {t}", f"RL: {t}") for t in TUNED if t != "dpo_mix"],
                DOCS / "reward_vs_kl.png")
    import matplotlib.pyplot as plt  # after plain_vs_kl chose the Agg backend

    def point(name, key):
        rs = list(sets[name].values())
        return mean_se([r["rewards"][key] for r in rs])

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    marks = [("base", "base", "k"), ("vas b=4 plain=1", "VAS β4: plain", "C0"),
             (MIX, "VAS β4: plain 0.5 + positivity 0.5", "C0"),
             ("tuned dpo_b0.1", "DPO: plain", "C3"), ("tuned dpo_mix", "DPO: vader 0.5 + plain 0.5",
                                                       "C3"),
             ("tuned grpo", "GRPO: plain", "C2")]
    for name, label, color in marks:
        if name not in sets:
            continue
        (px, sx), (vy, sy) = point(name, "plain"), point(name, "vader")
        ax.errorbar([px], [vy], xerr=[sx], yerr=[sy], fmt="o" if "mix" not in name.lower()
                    and "0.5" not in name else "^", color=color, capsize=3, label=label)
    save_figure(fig, ax, "plain (mean ± s.e.)", "vader (mean ± s.e.)",
                DOCS / "two_objectives.png")
    return ["![plain vs KL](docs/baselines/reward_vs_kl.png)",
            "![two objectives](docs/baselines/two_objectives.png)"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-forgetting", action="store_true")
    a = ap.parse_args()
    sets = by_setting(read_records(EVAL / RESULTS_FILE))
    metas = {t: json.loads((RUNS / t / "baseline.json").read_text()) for t in TUNED
             if (RUNS / t / "baseline.json").is_file()}
    saved = DOCS / "forgetting.json"  # the slow part, kept so a rerun can skip it
    if a.no_forgetting:
        forget = json.loads(saved.read_text()) if saved.is_file() else {}
    else:
        forget = forgetting(sets)
        saved.write_text(json.dumps(forget, indent=1) + "\n")
    DOCS.mkdir(parents=True, exist_ok=True)
    for t, m in metas.items():  # the tuned models' records, kept (the adapters are not)
        keep = DOCS / "models" / t
        keep.mkdir(parents=True, exist_ok=True)
        (keep / "baseline.json").write_text(json.dumps(m, indent=2) + "\n")
        for f in ("curves.png", "metrics.jsonl"):
            if (RUNS / t / f).is_file():
                (keep / f).write_bytes((RUNS / t / f).read_bytes())
    block = rows_table(sets, metas, forget) + [""] + versus(sets) + [""] + plots(sets)
    text = "\n".join(block) + "\n"
    (DOCS / "RESULTS_TABLE.md").write_text(text)
    if README.is_file() and MARK[0] in README.read_text():
        r = README.read_text()
        head, rest = r.split(MARK[0], 1)
        _, tail = rest.split(MARK[1], 1)
        README.write_text(head + MARK[0] + "\n" + text + MARK[1] + tail)
    print(text)


if __name__ == "__main__":
    main()
