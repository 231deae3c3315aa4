"""Value-model start-up: a cold start (empty cache: dequantize the GGUF, convert the tokenizer,
write both to the cache) against a warm one (both read from the cache), side by side.

Each start is a fresh process (as `vas-proxy generate`/`serve`/`demo` are) that imports torch
and transformers, then loads the value model SPEC with `values.loader.load_value`. Cold and
warm starts alternate, so whatever else runs on the machine weighs on both alike; each cold
start gets its own empty cache directory, the warm ones share one that a first, unmeasured
start filled. With `--before TREE` (a checkout of the code before the cache, e.g. `git worktree
add /tmp/old be16031`) a third start per round runs that tree's loader, as every start did then.
Reported per column: median and p10-p90 over the repeats, and the ratios to warm.

    git worktree add /tmp/old be16031
    python benchmarks/bench_startup.py --repeats 5 --before /tmp/old --json .bench/startup_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import torch, transformers, peft  # what every start imports before loading
from vas_proxy.values.loader import load_value
t1 = time.perf_counter()
value = load_value(sys.argv[1])
t2 = time.perf_counter()
import vas_proxy
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "threads": torch.get_num_threads(),
                  "package": vas_proxy.__file__}))
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default="bundled:positivity", help="the value model to load")
    p.add_argument("--repeats", type=int, default=5, help="cold and warm starts each")
    p.add_argument("--before", metavar="TREE", help="also start this checkout's loader "
                                                    "(the code before the cache)")
    p.add_argument("--json", help="write the figures here")
    return p.parse_args(argv)


def start(spec: str, cache_dir: Path, tree: Path = ROOT) -> dict:
    """One fresh process loading `spec` with `cache_dir` as the cache root, from `tree`."""
    from vas_proxy import env

    child_env = {**os.environ, env.CACHE_DIR: str(cache_dir), "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CHILD, spec], capture_output=True, text=True,
                         env=child_env, cwd=tree, check=False)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"the start failed:\n{res.stderr}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if not out["package"].startswith(str(tree)):
        raise SystemExit(f"the start imported {out['package']}, not the code in {tree}")
    return {**out, "process_s": wall}


def summary(xs: list[float]) -> dict:
    if len(xs) == 1:
        return {"median": xs[0], "p10": xs[0], "p90": xs[0], "n": 1}
    deciles = statistics.quantiles(xs, n=10, method="inclusive")
    return {"median": statistics.median(xs), "p10": deciles[0], "p90": deciles[-1],
            "n": len(xs)}


def main(argv=None) -> dict:
    a = parse_args(argv)
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {"cold": [], "warm": []}
    if a.before:
        runs["before"] = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        warm_dir = Path(tmp) / "warm"
        print(f"filling the warm cache ({a.spec}) ...", file=sys.stderr)
        start(a.spec, warm_dir)
        for i in range(a.repeats):
            runs["cold"].append(start(a.spec, Path(tmp) / f"cold{i}"))
            runs["warm"].append(start(a.spec, warm_dir))
            if a.before:
                runs["before"].append(start(a.spec, Path(tmp) / f"before{i}",
                                            Path(a.before).resolve()))
            print(f"  {i + 1}/{a.repeats}: " + ", ".join(
                f"{k} load {v[-1]['load_s']:.1f} s" for k, v in runs.items()), file=sys.stderr)
    figures = {kind: {col: summary([r[col] for r in rs])
                      for col in ("load_s", "import_s", "process_s")}
               for kind, rs in runs.items()}
    result = {"spec": a.spec, "repeats": a.repeats, "threads": runs["warm"][0]["threads"],
              "cpu_count": os.cpu_count(), "loadavg_before": load_before,
              "loadavg_after": os.getloadavg(), "figures": figures, "runs": runs}
    print(table(result))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(result: dict) -> str:
    f = result["figures"]
    title = (f"value model {result['spec']}: {result['repeats']} cold and warm starts each, "
             f"{result['threads']} torch threads of {result['cpu_count']} cores, load average "
             f"{result['loadavg_before'][0]:.1f} -> {result['loadavg_after'][0]:.1f}")
    kinds = [k for k in ("before", "cold", "warm") if k in f]
    rows = [title, "", "| seconds | " + " | ".join(f"{k}: median (p10-p90)" for k in kinds)
            + " | " + " | ".join(f"{k} / warm" for k in kinds if k != "warm") + " |",
            "|---" * (1 + 2 * len(kinds) - 1) + "|"]
    names = {"load_s": "value model load", "import_s": "imports (torch, transformers, peft)",
             "process_s": "whole process"}
    for col, name in names.items():
        cells = [f"{f[k][col]['median']:.2f} ({f[k][col]['p10']:.2f}-{f[k][col]['p90']:.2f})"
                 for k in kinds]
        ratios = [f"{f[k][col]['median'] / f['warm'][col]['median']:.1f}x"
                  for k in kinds if k != "warm"]
        rows.append(f"| {name} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
