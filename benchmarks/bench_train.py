"""Training costs on this machine: rollout throughput from the embedded upstream (responses/s,
tokens/s) and value-model training throughput (tokens/s, seconds per step, peak memory) for
LoRA (all layers), LoRA on the top layers only, and a full fine-tune, side by side.

Each training configuration runs in its own spawned process so its peak RSS is its own
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`); on CUDA the peak allocated memory is reported.
Medians over the measured steps, with min–max spreads.

    python benchmarks/bench_train.py --json .bench/train_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {"lora r16, all layers": {"lora_r": 16, "lora_layers": 0},
           "lora r16, top 8 layers": {"lora_r": 16, "lora_layers": 8},
           "full fine-tune": {"lora_r": 0, "lora_layers": 0}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", default=str(ROOT / "data/prompts/everyday.jsonl"))
    p.add_argument("--rollouts", type=int, default=8, help="responses per rollout repeat")
    p.add_argument("--rollout-repeats", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="measured optimiser steps per config")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--backbone", default="smollm2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--skip-rollouts", action="store_true")
    p.add_argument("--json", help="write the figures here")
    return p.parse_args(argv)


def spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


# --------------------------------------------------------------------------- rollouts

async def bench_rollouts(a) -> tuple[dict, list]:
    """Sample `rollouts` responses `rollout_repeats` times (fresh seeds each time), with token
    logprobs (the default) and text only (`--no-logprobs`), interleaved."""
    from vas_proxy.assets import smollm2_gguf
    from vas_proxy.templates import from_gguf
    from vas_proxy.train.prompts import read_prompts, render_prompts
    from vas_proxy.train.rollouts import JsonlStore, Rollout, sample_rollouts
    from vas_proxy.upstream.client import UpstreamClient
    from vas_proxy.upstream.local import LocalUpstream

    template = from_gguf(str(smollm2_gguf()))
    items = render_prompts(read_prompts(a.prompts), template)[:a.rollouts]
    per_s = {True: [], False: []}
    tok_s, samples = [], []
    with LocalUpstream() as up, tempfile.TemporaryDirectory() as tmp:
        client = UpstreamClient(up.base_url, up.model, use_cache=False)
        try:
            for rep in range(a.rollout_repeats):
                for logprobs in (True, False):
                    store = JsonlStore(Path(tmp) / f"r{rep}{logprobs}.jsonl", Rollout)
                    t0 = time.perf_counter()
                    rs = await sample_rollouts(client, items, samples=1,
                                               max_tokens=a.max_tokens, seed=1000 + rep,
                                               stop=template.stop_strings, store=store,
                                               concurrency=2, progress=False,
                                               top_k=int(logprobs))
                    dt = time.perf_counter() - t0
                    per_s[logprobs].append(len(rs) / dt)
                    if logprobs:
                        tok_s.append(sum(len(r.tokens) for r in rs) / dt)
                        samples = rs
        finally:
            await client.aclose()
    return {"responses_per_s": spread(per_s[True]), "tokens_per_s": spread(tok_s),
            "text_only_responses_per_s": spread(per_s[False])}, samples


# --------------------------------------------------------------------------- training

def _train_worker(cfg_kw: dict, texts: list[tuple[str, str]], a_kw: dict, queue) -> None:
    import torch

    from vas_proxy.train.backbone import build_model
    from vas_proxy.train.config import TrainConfig
    from vas_proxy.train.td import make_example
    from vas_proxy.train.trainer import Trainer

    cfg = TrainConfig(prompts="-", reward="vader", out=a_kw["out"], backbone=a_kw["backbone"],
                      device=a_kw["device"], dtype=a_kw["dtype"], batch_size=a_kw["batch_size"],
                      epochs=1, quiet=True, **cfg_kw)
    t0 = time.perf_counter()
    model, tok = build_model(cfg)
    load_s = time.perf_counter() - t0
    examples = [make_example(tok, p, r, 0.5) for p, r in texts]
    trainer = Trainer(cfg, model, tok, examples, Path(a_kw["out"]))
    n_params = sum(p.numel() for _, p in trainer.params)
    batches = trainer.epoch_batches(0)
    steps = []
    for i in range(a_kw["warmup"] + a_kw["steps"]):
        stats = trainer.train_step([batches[i % len(batches)]])
        if i >= a_kw["warmup"]:
            steps.append(stats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    gpu_peak = None
    if str(cfg.device).startswith("cuda"):
        gpu_peak = torch.cuda.max_memory_allocated() / 2**20
    queue.put({"trainable_params": n_params, "load_s": load_s,
               "tokens_per_s": spread([s["tokens_per_s"] for s in steps]),
               "step_s": spread([s["seconds"] for s in steps]),
               "tokens_per_step": statistics.mean(s["tokens"] for s in steps),
               "peak_rss_mib": peak, "peak_cuda_mib": gpu_peak})


def bench_training(a, texts: list[tuple[str, str]]) -> dict:
    ctx = mp.get_context("spawn")
    out = {}
    for name in a.configs:
        with tempfile.TemporaryDirectory() as tmp:
            queue = ctx.Queue()
            kw = {"out": tmp, "backbone": a.backbone, "device": a.device, "dtype": a.dtype,
                  "batch_size": a.batch_size, "steps": a.steps, "warmup": a.warmup}
            proc = ctx.Process(target=_train_worker, args=(CONFIGS[name], texts, kw, queue))
            proc.start()
            out[name] = queue.get()
            proc.join()
        print(f"  {name}: {out[name]['tokens_per_s']['median']:.0f} tokens/s", file=sys.stderr)
    return out


def training_texts(a, samples) -> list[tuple[str, str]]:
    """Realistic (upstream prompt, response) pairs: sampled ones, else prompts with a stock
    32-token answer."""
    if samples:
        pairs = [(r.upstream_prompt, r.response) for r in samples]
    else:
        from vas_proxy.assets import smollm2_gguf
        from vas_proxy.templates import from_gguf
        from vas_proxy.train.prompts import read_prompts, render_prompts

        items = render_prompts(read_prompts(a.prompts), from_gguf(str(smollm2_gguf())))
        answer = ("Sure! Here are a few simple ideas that you might enjoy, depending on how "
                  "much time you have and what you feel like doing today.")
        pairs = [(i.upstream, answer) for i in items[:a.batch_size]]
    while len(pairs) < a.batch_size:
        pairs = pairs + pairs
    return pairs[:a.batch_size * 2]


def main(a) -> int:
    results = {"args": vars(a)}
    samples = []
    if not a.skip_rollouts:
        results["rollouts"], samples = asyncio.run(bench_rollouts(a))
    results["training"] = bench_training(a, training_texts(a, samples))
    if "rollouts" in results:
        r = results["rollouts"]
        print(f"rollouts ({a.rollouts} × {a.max_tokens} tokens, {a.rollout_repeats} repeats): "
              f"{r['responses_per_s']['median']:.3f} responses/s "
              f"[{r['responses_per_s']['min']:.3f}–{r['responses_per_s']['max']:.3f}], "
              f"{r['tokens_per_s']['median']:.1f} tokens/s; text only (--no-logprobs): "
              f"{r['text_only_responses_per_s']['median']:.3f} responses/s "
              f"[{r['text_only_responses_per_s']['min']:.3f}–"
              f"{r['text_only_responses_per_s']['max']:.3f}], "
              f"{r['text_only_responses_per_s']['median'] / r['responses_per_s']['median']:.1f}×")
    print(f"\ntraining ({a.backbone}, {a.device}, batch {a.batch_size}, {a.steps} steps):\n")
    print("| config | trainable params | tokens/s median [min–max] | s/step median "
          "[min–max] | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results["training"].items():
        t, s = r["tokens_per_s"], r["step_s"]
        print(f"| {name} | {r['trainable_params'] / 1e6:.2f} M | {t['median']:.0f} "
              f"[{t['min']:.0f}–{t['max']:.0f}] | {s['median']:.2f} [{s['min']:.2f}–"
              f"{s['max']:.2f}] | {r['peak_rss_mib']:.0f} |")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
