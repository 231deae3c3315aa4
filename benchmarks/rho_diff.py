"""Two guided rows of one eval directory, paired: gain difference and effective-ρ difference.

    python benchmarks/rho_diff.py [--sd-w X] EVAL_DIR[,EVAL_DIR...] REWARD "SETTING A" ["SETTING B" ...]

Every later setting is compared with the first over the (prompt, draw) pairs both have (over
several eval directories' pairs together when given: sd_w is then the first one's): the
paired gain difference over base ± its s.e., each row's KL, and the difference of effective ρ
(docs/design.md §1.10, sd_w from the eval's Best-of-N pools) with a bootstrap s.e. over the
pairs (4000 draws, seed 0). ρ compares rows at different KLs; gains compare only at about
equal KL. `--sd-w X` gives sd_w where the directory has no Best-of-N pools of REWARD (another
eval's, on the same prompts).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vas_proxy.eval.efficiency import effective_rho, within_sd
from vas_proxy.eval.files import kl_field, read_records
from vas_proxy.stats import bootstrap_indices

DRAWS = 4000


def read_dirs(dirs: list[str]) -> list[dict]:
    """Every record of the eval directories, each tagged with its directory's index."""
    return [{**r, "dir": i} for i, d in enumerate(dirs)
            for r in read_records(Path(d) / "results.jsonl")]


def by_pair(records: list[dict], setting: str, reward: str) -> dict[tuple, tuple[float, float]]:
    """(reward, KL) per pair; the KL is `kl_path` where every record of the setting has it (as
    the eval's summary reads it), else the chosen tokens' `kl` (or Best-of-N's bound)."""
    rs = [r for r in records if r["setting"] == setting]
    kl = kl_field(rs)
    return {(r["dir"], r["prompt_index"], r["sample"]): (float(r["rewards"][reward]),
                                                         float(r[kl])) for r in rs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sd-w", type=float, help="sd_w to use instead of the first "
                        "directory's Best-of-N pools")
    parser.add_argument("dirs", help="eval directories, comma-separated")
    parser.add_argument("reward")
    parser.add_argument("settings", nargs="+")
    a = parser.parse_args()
    dirs, reward, settings = a.dirs.split(","), a.reward, a.settings
    records = read_dirs(dirs)
    sd = a.sd_w if a.sd_w is not None else within_sd([r for r in records if r["dir"] == 0], reward)
    base = by_pair(records, "base", reward)
    rows = [by_pair(records, s, reward) for s in settings]
    keys = sorted(set(base).intersection(*rows))
    if not keys:
        sys.exit(f"no (prompt, draw) pair has all of {settings} and base")
    b = np.array([base[k][0] for k in keys])
    gains = [np.array([row[k][0] for k in keys]) - b for row in rows]
    kls = [np.array([row[k][1] for k in keys]) for row in rows]

    def rho(i: int, idx: np.ndarray) -> float:
        return effective_rho(float(gains[i][idx].mean()), float(kls[i][idx].mean()), sd)

    boots = bootstrap_indices(len(keys), DRAWS, seed=0)
    everything = np.arange(len(keys))
    out = {"dirs": dirs, "reward": reward, "pairs": len(keys), "sd_w": sd, "rows": []}
    for i, setting in enumerate(settings):
        row = {"setting": setting, "gain": float(gains[i].mean()),
               "gain_se": float(gains[i].std(ddof=1) / np.sqrt(len(keys))),
               "kl": float(kls[i].mean()), "rho": rho(i, everything)}
        if i:
            d = gains[i] - gains[0]
            row["gain_minus_first"] = float(d.mean())
            row["gain_minus_first_se"] = float(d.std(ddof=1) / np.sqrt(len(keys)))
            row["rho_minus_first"] = row["rho"] - out["rows"][0]["rho"]
            row["rho_minus_first_se"] = float(np.nanstd([rho(i, x) - rho(0, x) for x in boots]))
        out["rows"].append(row)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
