"""Best-of-2 over VAS samples, estimated offline from the two draws every guided row has.

    python benchmarks/hybrid_pilot.py EVAL_DIR[,EVAL_DIR...] REWARD [--json OUT]

A guided row's two draws of a prompt are two independent samples of its guided law q for that
prompt (their seeds differ), so the better of the two by REWARD is distributed exactly as
Best-of-2 over VAS samples (`vas-proxy eval --guided-best-of 2`) of that prompt. Its KL to the
base is at most log 2 − 1/2 plus the winner's own Σ log q − log p (`bestof_modes.hybrid_kl`,
docs/design.md §1.7). Per prompt, each row is set against the directory's Best-of-16 by REWARD
and base (each the mean of its two draws): the row's own mean, KL and ρ on those prompts,
and the hybrid's gain over base, KL bound, ρ at that bound
(§1.10, sd_w from the Best-of-N pools of the first directory) and the difference from
Best-of-16 with its s.e. over prompts. One prompt is one pair here, so there are half as many
pairs as the row has draws.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from rho_diff import by_pair, read_dirs
from vas_proxy.bestof_modes import hybrid_kl
from vas_proxy.eval.efficiency import effective_rho, within_sd


def draws(records: list[dict], setting: str, reward: str) -> dict[tuple, list[tuple]]:
    """(dir, prompt) -> [(reward, kl) of each draw of `setting`, in draw order]."""
    out: dict[tuple, list] = defaultdict(list)
    for (d, prompt, _), pair in sorted(by_pair(records, setting, reward).items()):
        out[d, prompt].append(pair)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", help="eval directories, comma-separated")
    parser.add_argument("reward")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    a = parser.parse_args()
    dirs = a.dirs.split(",")
    records = read_dirs(dirs)
    sd = within_sd([r for r in records if r["dir"] == 0], a.reward)
    bon16 = f"bon N=16 {a.reward}"
    guided = sorted({r["setting"] for r in records if r["setting"].startswith("vas ")})
    by = {s: draws(records, s, a.reward) for s in ["base", bon16, *guided]}
    if not by[bon16] or not by["base"]:
        sys.exit(f"{a.dirs} has no base or {bon16} rows")
    out = {"dirs": dirs, "reward": a.reward, "sd_w": sd, "rows": []}
    for setting in guided:
        keys = sorted(k for k, v in by[setting].items()
                      if len(v) == 2 and len(by["base"].get(k, ())) == 2
                      and len(by[bon16].get(k, ())) == 2)
        if not keys:
            continue
        best = [max(by[setting][k], key=lambda x: x[0]) for k in keys]  # ties: the first draw
        reward = np.array([b[0] for b in best])
        kl = np.array([hybrid_kl(2, b[1]) for b in best])
        base = np.array([np.mean([x[0] for x in by["base"][k]]) for k in keys])
        top = np.array([np.mean([x[0] for x in by[bon16][k]]) for k in keys])
        own = np.array([np.mean([x[0] for x in by[setting][k]]) for k in keys])
        d = reward - top
        row_kl = float(np.mean([x[1] for k in keys for x in by[setting][k]]))
        gain = float((reward - base).mean())
        out["rows"].append({
            "setting": setting, "prompts": len(keys),
            "row_mean": float(own.mean()), "row_kl": row_kl,
            "row_rho": effective_rho(float((own - base).mean()), row_kl, sd),
            "hybrid_mean": float(reward.mean()), "hybrid_kl_bound": float(kl.mean()),
            "hybrid_gain": gain, "hybrid_rho": effective_rho(gain, float(kl.mean()), sd),
            "bon16_mean": float(top.mean()),
            "minus_bon16": float(d.mean()),
            "minus_bon16_se": float(d.std(ddof=1) / np.sqrt(len(d))),
            "within_bound": bool(kl.mean() <= hybrid_kl(16, 0.0))})
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
