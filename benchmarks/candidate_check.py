"""Does the one-step check of the top-k candidates predict guidance? (Issue 13; plan fixed
before any run: docs/training/candidates/PLAN.md.)

    python benchmarks/candidate_check.py sample     # states + completions (llama-server), resumable
    python benchmarks/candidate_check.py predict    # every model's prediction, then the comparison

`sample` writes runs/candidates/states.jsonl; `predict` writes docs/training/candidates/
predictions.json and RESULTS.md (+ predicted_vs_measured.png) against every guided row measured
so far at 64 tokens (read from each eval directory's summary.csv).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from vas_proxy.train.candidates import (
    STATES_FILE,
    CandidateState,
    sample_states,
    score_states,
)
from vas_proxy.train.rollouts import JsonlStore

RUN = ROOT / "runs/candidates"
DOCS = ROOT / "docs/training/candidates"
PROMPTS = ROOT / "data/prompts/everyday_heldout.jsonl"
SETTINGS = {"draws": 2, "k": 20, "complete": 6, "m": 4, "max_tokens": 64, "seed": 0}
N_PROMPTS = 64
REWARDS = ["vader", "plain", "interests:gardener", "py:unseen_rewards:asks",
           "py:unseen_rewards:diversity"]
ABL = "runs/ablation"
# (label, value SPEC, reward SPEC, eval directory, setting name in its summary.csv, beta)
POINTS = [
    ("bundled plain b2", "bundled:plain", "plain", "docs/results/frontier_plain",
     "vas b=2 plain=1", 2),
    ("bundled plain b4", "bundled:plain", "plain", "docs/results/frontier_plain",
     "vas b=4 plain=1", 4),
    ("plain64 b2", "runs/retrain64/plain", "plain", "docs/results/frontier_plain",
     "vas b=2 plain64=1", 2),
    ("plain64 b4", "runs/retrain64/plain", "plain", "docs/results/frontier_plain",
     "vas b=4 plain64=1", 4),
    ("positivity64 b4", "runs/retrain64/vader", "vader", "docs/results/frontier_plain",
     "vas b=4 positivity64=1", 4),
    ("bundled positivity b2", "bundled:positivity", "vader", "docs/results/frontier",
     "vas b=2 positivity=1", 2),
    ("bundled positivity b4", "bundled:positivity", "vader", "docs/results/frontier",
     "vas b=4 positivity=1", 4),
    ("asks b4", f"{ABL}/py_unseen_rewards_asks/recipe", "py:unseen_rewards:asks",
     "docs/training/unseen/asks_eval", "vas b=4 asks=1", 4),
    ("diversity b4", f"{ABL}/py_unseen_rewards_diversity/recipe", "py:unseen_rewards:diversity",
     "docs/training/unseen/diversity_eval", "vas b=4 diversity=1", 4),
    ("personal b2", "bundled:personal", "interests:gardener", "docs/training/personal/eval",
     "vas b=2 personal=1", 2),
    ("personal b4", "bundled:personal", "interests:gardener", "docs/training/personal/eval",
     "vas b=4 personal=1", 4),
]
BETAS = [0.5, 1, 2, 4, 8]


def sample() -> None:
    from vas_proxy.assets import smollm2_gguf
    from vas_proxy.rewards import load_reward
    from vas_proxy.templates import from_gguf
    from vas_proxy.train.prompts import read_prompts, render_prompts
    from vas_proxy.upstream.client import UpstreamClient
    from vas_proxy.upstream.local import LocalUpstream

    RUN.mkdir(parents=True, exist_ok=True)
    template = from_gguf(str(smollm2_gguf()))
    prompts = render_prompts(read_prompts(PROMPTS)[:N_PROMPTS], template)
    store = JsonlStore(RUN / STATES_FILE, CandidateState)

    async def go():
        with LocalUpstream(server="llama-server", slots=4, model_alias="smollm2") as local:
            client = UpstreamClient(local.base_url, "smollm2", profile=local.profile,
                                    use_cache=False)
            try:
                return await sample_states(client, prompts, stop=template.stop_strings,
                                           store=store, concurrency=4, **SETTINGS)
            finally:
                await client.aclose()

    states = asyncio.run(go())
    for spec in REWARDS:
        score_states(states, load_reward(spec), spec, store)
    print(f"{len(states)} states, {sum(len(c) for s in states for c in s.completions)} "
          f"completions in {RUN / STATES_FILE}")


def measured(point) -> dict:
    _, _, reward, where, setting, _ = point
    with open(ROOT / where / "summary.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["setting"] == setting)
    return {"gain": float(row[f"{reward}_gain"]), "gain_se": float(row[f"{reward}_gain_se"]),
            "kl": float(row["kl_mean"]), "n": int(row["n"])}


def predict() -> None:
    from vas_proxy.train.onestep import predict as one_step
    from vas_proxy.values.loader import load_value

    states = sorted(JsonlStore(RUN / STATES_FILE, CandidateState).load().values(),
                    key=lambda s: s.key)
    out = {"settings": SETTINGS, "n_prompts": N_PROMPTS, "models": {}, "points": []}
    for spec, reward in dict.fromkeys((p[1], p[2]) for p in POINTS):
        value = load_value(spec, quiet=True)
        values = [value.score(s.upstream_prompt, s.prefix, s.texts) for s in states]
        out["models"][spec] = one_step(states, values, reward, BETAS)
        print(f"{spec}: within-state corr {out['models'][spec].get('candidates_within_corr')}",
              flush=True)
    for point in POINTS:
        label, spec, reward, _, _, beta = point
        pred = out["models"][spec]["betas"][f"{beta:g}"]
        out["points"].append({"label": label, "model": spec, "reward": reward, "beta": beta,
                              "sd": out["models"][spec]["reward_sd"], "predicted": pred,
                              "measured": measured(point)})
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "predictions.json").write_text(json.dumps(out, indent=1) + "\n")
    report(out)


def report(out: dict) -> None:
    from scipy.stats import pearsonr, spearmanr

    pts = out["points"]
    lines = [("| point | predicted KL | measured KL | predicted gain | measured gain | "
              "KL over the 6 | oracle's gain there |"),
             "|---|---|---|---|---|---|---|"]
    for p in pts:
        pr, me = p["predicted"], p["measured"]
        lines.append(f"| {p['label']} | {pr['kl']:.2f} ± {pr['kl_se']:.2f} | {me['kl']:.2f} | "
                     f"{pr['gain']:+.3f} ± {pr['gain_se']:.3f} | {me['gain']:+.3f} ± "
                     f"{me['gain_se']:.3f} | {pr['kl_completed']:.2f} | "
                     f"{pr['oracle_gain']:+.3f} ± {pr['oracle_gain_se']:.3f} |")
    pk = np.log([p["predicted"]["kl"] for p in pts])
    mk = np.log([p["measured"]["kl"] for p in pts])
    low = [p for p in pts if p["measured"]["kl"] <= 3]
    within = sum(1 / 1.5 <= p["predicted"]["kl"] / p["measured"]["kl"] <= 1.5 for p in low)
    pg = [p["predicted"]["gain"] / p["sd"] for p in pts]
    mg = [p["measured"]["gain"] / p["sd"] for p in pts]
    strong = [p for p in pts if p["measured"]["gain"] > 3 * p["measured"]["gain_se"]]
    weak = [p for p in pts if p["measured"]["gain"] < 2 * p["measured"]["gain_se"]]
    hit = sum(p["predicted"]["gain"] > 2 * p["predicted"]["gain_se"] for p in strong)
    miss = sum(p["predicted"]["gain"] > 2 * p["predicted"]["gain_se"] for p in weak)
    claims = [
        (f"- Claim 1 (KL): Pearson of log KLs {pearsonr(pk, mk)[0]:.2f} (needs ≥ 0.9); "
         f"within ×1.5 for {within} of {len(low)} points measured ≤ 3 nats (needs all)."),
        (f"- Claim 2 (gain, in reward sd): Spearman {spearmanr(pg, mg)[0]:.2f} (needs ≥ 0.7); "
         f"predicted > 2 s.e. for {hit} of {len(strong)} strong points (needs all) and for "
         f"{miss} of {len(weak)} null points (needs 0)."),
    ]
    models = [("| model | reward | within-state corr (n) | noise ceiling (split-half r) | "
               "corr / ceiling |"), "|---|---|---|---|---|"]
    for spec, m in out["models"].items():
        corr, noise = m.get("candidates_within_corr") or 0.0, m["noise"]
        ceiling = noise["ceiling"] or 0.0
        models.append(f"| {spec} | {m['reward']} | {corr:.3f} ({m.get('candidates_within_n')}) "
                      f"| {ceiling:.2f} ({noise['split_half']:+.3f}) | "
                      + (f"{corr / ceiling:.2f} |" if ceiling > 0.05 else "– |"))
    models += ["", ("The oracle guides by the candidates' Monte-Carlo values themselves, "
                    "cross-fitted (2 completions pick, the other 2 score), at the beta where "
                    "its KL over the 6 completed candidates equals the model's (the model's "
                    "predicted gain is over the same 6). (Added after the first results: the "
                    "plan's oracle at the model's beta paid 5-47 nats and compared nothing.)"),
               "", ("Noise ceiling: the within-state correlation of two halves of each "
                    "candidate's completions (2 and 2), stepped up to 4 (Spearman-Brown); its "
                    "square root caps any model's within-state correlation with Q̂. Its s.e. is "
                    "about ±0.04 on the split-half r, so a ceiling near 0 means 'not resolved', "
                    "not 'no signal'.")]
    head = ["# One-step candidate check: predictions against guided rows", "",
            ("Made by `python benchmarks/candidate_check.py predict` from "
             "runs/candidates/states.jsonl (plan: PLAN.md)."), ""]
    text = "\n".join(head + lines + [""] + claims + [""] + models) + "\n"
    (DOCS / "RESULTS.md").write_text(text)
    print(text)
    plot(pts)


def plot(pts: list[dict]) -> None:
    """Predicted against measured: KL (log scale) and gain in reward sd, with ±1 s.e. bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, key, unit in ((axes[0], "kl", 1), (axes[1], "gain", None)):
        for p in pts:
            sd = 1 if unit else p["sd"]
            x, y = p["measured"][key] / sd, p["predicted"][key] / sd
            xe = p["measured"].get(key + "_se", 0) / sd
            ax.errorbar(x, y, xerr=xe, yerr=p["predicted"][key + "_se"] / sd, fmt="o", ms=4,
                        capsize=2)
            ax.annotate(p["label"], (x, y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k:", lw=1)
    axes[0].set(xscale="log", yscale="log", xlabel="measured KL per response (nats)",
                ylabel="predicted KL (one-step, base states)")
    axes[1].set(xlabel="measured gain (reward sd)", ylabel="predicted gain (reward sd)")
    axes[1].axhline(0, color="grey", lw=0.5)
    fig.suptitle("One-step candidate check against guided evaluation (64 tokens)")
    fig.tight_layout()
    fig.savefig(DOCS / "predicted_vs_measured.png", dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("phase", choices=["sample", "predict", "report"])
    a = ap.parse_args()
    if a.phase == "sample":
        sample()
    elif a.phase == "predict":
        predict()
    else:
        report(json.loads((DOCS / "predictions.json").read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
