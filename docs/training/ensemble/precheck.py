"""The ensemble plan's pre-check (in sample, on the candidate check's states): each model's and
the average's within-state correlation with the candidates' Monte-Carlo values, and c, the two
models' within-state correlation with each other over all listed candidates.

    python docs/training/ensemble/precheck.py REWARD SPEC_A SPEC_B
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from within_state import load_states, score, within


def main() -> None:
    reward, specs = sys.argv[1], sys.argv[2:4]
    states = load_states(reward)
    q_hats = [[float(np.mean(r)) for r in s.rewards[reward]] for s in states]
    vals = {}
    for spec in specs:
        vals[spec] = score(spec, states)
        print(spec, within(vals[spec], q_hats), flush=True)
    a, b = (vals[s] for s in specs)
    print("average", within([(x + y) / 2 for x, y in zip(a, b)], q_hats))
    print("pooled within-state corr between models", within(a, [list(y) for y in b]))


if __name__ == "__main__":
    main()
