"""Does the value model guide? Mean reward of guided generations at several beta on held-out
prompts, against beta = 0 (the upstream's own top-k distribution).

Every setting uses the same prompts and seeds (prompt i % P, seed i), so besides the unpaired
difference in standard errors (Welch) the paired one is reported too: the same seed makes
the runs share their random draws until the guidance changes a token.

Cost: one upstream call per token for every setting, plus one value scoring of the top-k
candidates per token for beta != 0 (~0.3-0.5 s per token on a loaded 2-core CPU).

    python benchmarks/guidance_evidence.py --value vas_proxy/data/values/positivity \\
        --n 64 --max-tokens 32 --json .bench/guidance_evidence.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--value", default=str(ROOT / "vas_proxy/data/values/positivity"),
                   help="value checkpoint directory (default: the bundled positivity model)")
    p.add_argument("--prompts", default=str(ROOT / "data/prompts/everyday_heldout.jsonl"))
    p.add_argument("--reward", default="vader")
    p.add_argument("--betas", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    p.add_argument("--n", type=int, default=64, help="responses per setting")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--upstream", help="base URL (default: the embedded SmolLM2 upstream)")
    p.add_argument("--model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the results (with every response) here")
    p.add_argument("--resume", action="store_true",
                   help="keep the settings already in --json and run only the missing ones")
    p.add_argument("--restart-every", type=int, default=4,
                   help="restart the embedded upstream every N responses (0: never): its RAM "
                        "state cache grows by ~12 MiB per call, uncounted logits (measured)")
    return p.parse_args(argv)


def summarise(rewards: dict[float, list[float]]) -> list[dict]:
    base = np.asarray(rewards[min(rewards, key=abs)])
    rows = []
    for beta, rs in rewards.items():
        r = np.asarray(rs)
        se = r.std(ddof=1) / math.sqrt(len(r))
        row = {"beta": beta, "n": len(r), "mean": float(r.mean()), "se": float(se)}
        if beta != 0.0 and len(r) == len(base):
            diff = r.mean() - base.mean()
            se_unpaired = math.sqrt(se ** 2 + (base.std(ddof=1) / math.sqrt(len(base))) ** 2)
            d = r - base
            se_paired = d.std(ddof=1) / math.sqrt(len(d))
            row.update(diff=float(diff), diff_in_se=float(diff / se_unpaired),
                       diff_in_paired_se=float(diff / se_paired) if se_paired > 0 else None)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| beta | n | mean reward ± s.e. | difference vs beta 0 | in s.e. (unpaired) | "
           "in s.e. (paired) | mean KL (nats) | s/response |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        diff = f"{r['diff']:+.3f}" if "diff" in r else "—"
        unp = f"{r['diff_in_se']:+.2f}" if "diff" in r else "—"
        par = f"{r['diff_in_paired_se']:+.2f}" if r.get("diff_in_paired_se") is not None else "—"
        out.append(f"| {r['beta']:g} | {r['n']} | {r['mean']:.3f} ± {r['se']:.3f} | {diff} | "
                   f"{unp} | {par} | {r.get('kl', 0):.2f} | {r.get('seconds', 0):.1f} |")
    return "\n".join(out)


async def main(a) -> int:
    from tqdm.auto import tqdm

    from vas_proxy.assets import smollm2_gguf
    from vas_proxy.engine import Engine, GenerationRequest, Guidance
    from vas_proxy.rewards import load_reward
    from vas_proxy.templates import from_gguf
    from vas_proxy.train.prompts import read_prompts
    from vas_proxy.upstream.client import UpstreamClient
    from vas_proxy.upstream.local import LocalUpstream
    from vas_proxy.values.checkpoint import CheckpointValue

    template = from_gguf(str(smollm2_gguf()))
    prompts = [template.render(item["messages"]) if "messages" in item else item["prompt"]
               for item in read_prompts(a.prompts)]
    reward = load_reward(a.reward, device=a.device)
    value = CheckpointValue.load(a.value, name="positivity", device=a.device)
    results = {"args": vars(a), "settings": {}}
    if a.resume and a.json and Path(a.json).is_file():
        results["settings"] = json.loads(Path(a.json).read_text())["settings"]
    with contextlib.ExitStack() as stack:
        base_url, model, local = a.upstream, a.model, None
        if base_url is None:
            local = stack.enter_context(LocalUpstream())
            base_url, model = local.base_url, local.model
        client = UpstreamClient(base_url, model or "default", use_cache=False)
        engine = Engine(client, {"positivity": value}, eos_texts=template.stop_strings)
        rewards: dict[float, list[float]] = {}
        try:
            for beta in a.betas:
                done = results["settings"].get(str(beta))
                if done is not None and len(done["rewards"]) == a.n:
                    rewards[beta] = done["rewards"]
                    continue
                texts, kls, t0 = [], [], time.perf_counter()
                for i in tqdm(range(a.n), desc=f"beta={beta:g}", unit="resp"):
                    if local is not None and a.restart_every and i and i % a.restart_every == 0:
                        local.stop()
                        local.start()  # same port: the client's base URL stays valid
                    req = GenerationRequest(prompt=prompts[i % len(prompts)],
                                            max_tokens=a.max_tokens, seed=i,
                                            guidance=Guidance(beta=beta, top_k=a.top_k))
                    gen = await engine.generate(req)
                    texts.append(gen.text)
                    kls.append(gen.kl)
                    value.reset()
                seconds = time.perf_counter() - t0
                rewards[beta] = reward([prompts[i % len(prompts)] for i in range(a.n)], texts)
                results["settings"][str(beta)] = {"texts": texts, "rewards": rewards[beta],
                                                  "kl": kls, "seconds": seconds}
                if a.json:
                    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
                    Path(a.json).write_text(json.dumps(results, indent=1))
        finally:
            await client.aclose()
    rows = summarise(rewards)
    for row in rows:
        s = results["settings"][str(row["beta"])]
        row["kl"] = float(np.mean(s["kl"]))
        row["seconds"] = s["seconds"] / a.n
    results["summary"] = rows
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
