"""Pre-check (in sample, 128 candidate states): within-state correlation of two plain models
and of their average."""
import sys
from pathlib import Path
ROOT = Path("/work/main"); sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks"))
import numpy as np
from vas_proxy.train.candidates import STATES_FILE, CandidateState
from vas_proxy.train.rollouts import JsonlStore
from vas_proxy.train.onestep import predict as one_step
from vas_proxy.values.loader import load_value
states = sorted(JsonlStore(ROOT / "runs/candidates" / STATES_FILE, CandidateState).load().values(), key=lambda s: s.key)
specs = sys.argv[2:]; reward = sys.argv[1]
vals = {}
for spec in specs:
    v = load_value(spec, quiet=True)
    vals[spec] = [np.asarray(v.score(s.upstream_prompt, s.prefix, s.texts), dtype=float) for s in states]
    print(spec, one_step(states, vals[spec], reward, [2.0]).get("candidates_within_corr"), flush=True)
avg = [np.mean([vals[s][i] for s in specs], axis=0) for i in range(len(states))]
print("average", one_step(states, avg, reward, [2.0]).get("candidates_within_corr"))
# within-state agreement of the two models
a, b = vals[specs[0]], vals[specs[1]]
cs = []
for x, y in zip(a, b):
    x = x - x.mean(); y = y - y.mean()
    cs.append((x @ y, x @ x, y @ y))
c = np.array(cs).sum(0); print("pooled within-state corr between models", c[0] / np.sqrt(c[1] * c[2]))
