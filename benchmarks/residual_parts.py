"""What a `--residual` model's two parts do at the states guidance sees.

    python benchmarks/residual_parts.py STATES.jsonl RUN [RUN ...] [--json OUT]

A residual checkpoint scores V = (φ + U)·scale: φ the reward read on the response so far plus
each candidate, U the trained model (docs/design.md §1.12). At each of calibrate's base states
(STATES.jsonl: `vas-proxy calibrate --out DIR` keeps them) the candidates are scored twice, with
and without φ, and the two parts are compared under the base's top-k probabilities p, the law
the tilt moves (pooled over states, as the effective ρ of §1.10 pools):

- var_share_phi: Σ Var_p(φ) / (Σ Var_p(φ) + Σ Var_p(U)), how much of the spread is φ's;
- corr_total_phi: pooled Cov_p(V, φ) / √(Σ Var_p(V) · Σ Var_p(φ)), how far V ranks as φ
  does;
- corr_phi_u: the same for φ and U (negative: U undoes φ);
- sd ratio: √(Σ Var_p(U) / Σ Var_p(φ)).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vas_proxy.values.loader import load_value


def pooled(states: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    """Pooled p-weighted moments of (φ, U) over the states' candidates."""
    vp = vu = cov = 0.0  # Σ Var_p(φ), Σ Var_p(U), Σ Cov_p(φ, U); V = φ + U follows from them
    for p, phi, u in states:
        dp, du = phi - p @ phi, u - p @ u
        vp, vu, cov = vp + p @ (dp * dp), vu + p @ (du * du), cov + p @ (dp * du)
    return {"states": len(states), "var_share_phi": vp / (vp + vu),
            "sd_ratio_u_to_phi": float(np.sqrt(vu / vp)),
            "corr_total_phi": (vp + cov) / np.sqrt((vp + vu + 2 * cov) * vp),
            "corr_phi_u": cov / np.sqrt(vp * vu)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("states", type=Path)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--json", type=Path)
    a = parser.parse_args()
    rows = [json.loads(x) for x in a.states.read_text().splitlines() if x.strip()]
    out = {"states_file": str(a.states), "runs": {}}
    for run in a.runs:
        value = load_value(run)
        phi_of = value.potential
        if phi_of is None:
            sys.exit(f"{run} was not trained with --residual")
        parts = []
        for r in rows:
            texts = r["texts"]
            value.potential = phi_of
            total = np.array(value.score(r["upstream_prompt"], r["prefix"], texts))
            value.potential = None
            u = np.array(value.score(r["upstream_prompt"], r["prefix"], texts))
            p = np.exp(np.array(r["logprobs"]) - max(r["logprobs"]))
            parts.append((p / p.sum(), total - u, u))
        value.potential = phi_of
        out["runs"][run] = pooled(parts)
        print(run, json.dumps(out["runs"][run]), flush=True)
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
