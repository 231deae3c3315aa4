"""Value-scoring time per decode step, with and without prefix-KV reuse.

Simulates a real decode on the SmolLM2 backbone (bundled GGUF): at each prefix length the state
grows by one token per step and k candidates are scored at every step. With reuse a step pays
for the new token plus the k candidate tokens; without, it recomputes k full sequences.
Goal (issue): reuse >= 10x faster at 1024 tokens.

`--chain L ...` times a speculative chunk instead: L drafted positions scored in ONE call (the
L x k strings `D_i + c`, D_i the drafts before position i, packed as a token trie) against the
L one-position calls the engine would otherwise make, interleaved per repeat.

    python benchmarks/bench_scoring.py --repeats 5 --json .bench/scoring.json
    python benchmarks/bench_scoring.py --chain 2 4 8 --prefixes 64 --repeats 9
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from vas_proxy.assets import smollm2_gguf
from vas_proxy.values.model import build_value_model, dtype_name, encode_batch
from vas_proxy.values.scorer import CheckpointValue

# Any fixed English text: repeated until it is long enough, then cut at token boundaries.
TEXT = (
    "The harbour town woke slowly. Fishermen checked their nets while the bakery on the corner "
    "pushed the smell of bread into the cold street. Children ran past the church, late for "
    "school again, and an old dog watched them from the steps of the post office. By noon the "
    "fog had lifted, the ferry had come and gone twice, and the market square was loud with "
    "people arguing about the price of apples, the weather, and the new mayor's plans for the "
    "pier. "
)
# Twenty plausible next-token texts, as an upstream's top-20 would return them.
CANDIDATES = [" the", " a", ",", ".", " and", " of", " to", " in", " was", " he", " it", " that",
              " with", " for", "\n", " on", " her", " his", " is", " at"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--repeats", type=int, default=5, help="timed decode steps per prefix length")
    p.add_argument("--prefixes", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--k", type=int, default=20, help="candidates per step (<= 20)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the library's, see configure_cpu_threads)")
    p.add_argument("--random-weights", action="store_true",
                   help="SmolLM2's shape with random weights (same cost per step; for machines "
                        "without the GGUF's tensors, see benchmarks/device_kit.py)")
    p.add_argument("--profile", action="store_true",
                   help="also print torch.profiler's top operators for reuse steps at the "
                        "longest prefix (where a step's time goes)")
    p.add_argument("--chain", type=int, nargs="+", default=None, metavar="L",
                   help="time chunks of L drafted positions (one call) against L one-position "
                        "calls, instead of reuse against no reuse")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return p.parse_args(argv)


def text_ids(tokenizer, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    return ids


def decode_states(tokenizer, length: int, steps: int) -> list[str]:
    """Response texts of `length`, `length`+1, ... tokens: one decode step apart."""
    ids = text_ids(tokenizer, length + steps)
    return [tokenizer.decode(ids[:length + j]) for j in range(steps)]


def time_chain(model, tokenizer, length: int, drafts: int, candidates: list[str], repeats: int,
               device: str) -> dict[str, list[float]]:
    """Seconds per chunk of `drafts` positions at a `length`-token state, for both ways, each
    with its own prefix cache warmed by the step before (the state one token shorter). The
    drafts are the text's next tokens, so the chunk's strings are what a decode would score."""
    ids = text_ids(tokenizer, length + repeats + 1 + drafts)
    chunk, steps = (CheckpointValue(model, tokenizer, name) for name in ("chunk", "steps"))
    times: dict[str, list[float]] = {"chunk": [], "steps": [], "tokenise": []}
    for j in range(repeats + 1):
        state = tokenizer.decode(ids[:length + j])
        drafted = [tokenizer.decode(ids[length + j:length + j + i]) for i in range(drafts)]
        texts = [d + c for d in drafted for c in candidates]
        for value in (chunk, steps):  # the step before: the cache holds the previous state
            value.score("", tokenizer.decode(ids[:length + j - 1]), candidates)
        sync(device)
        start = time.perf_counter()
        chunk.score("", state, texts)
        sync(device)
        mid = time.perf_counter()
        for d in drafted:
            steps.score("", state + d, candidates)
        sync(device)
        end = time.perf_counter()
        encode_batch(tokenizer, [state + t for t in texts])
        if j:  # the first round is a warm-up
            times["chunk"].append(mid - start)
            times["steps"].append(end - mid)
            times["tokenise"].append(time.perf_counter() - end)
    return times


def reuse_rows(args, tokenizer, reuse: CheckpointValue, full: CheckpointValue,
               candidates: list[str]) -> list[dict]:
    header = f"{'prefix':>6} {'k':>3} | {'reuse median (min-max)':>26} | " \
             f"{'no-reuse median (min-max)':>28} | {'speed-up':>8} | {'tokenise':>8}"
    print(header)
    print("-" * len(header))
    rows = []
    for length in args.prefixes:
        states = decode_states(tokenizer, length, args.repeats + 1)
        r = summary(time_steps(reuse, states, candidates, args.device))
        f = summary(time_steps(full, states, candidates, args.device))
        tok = summary(time_tokenise(tokenizer, states, candidates))
        ratio = f["median_s"] / r["median_s"]
        rows.append({"prefix_tokens": length, "k": len(candidates), "reuse": r, "no_reuse": f,
                     "tokenise": tok, "speedup_median": ratio})
        print(f"{length:>6} {len(candidates):>3} | {fmt(r):>26} | {fmt(f):>28} | {ratio:>7.1f}x"
              f" | {tok['median_s'] * 1e3:>5.1f} ms", flush=True)
    return rows


def chain_rows(args, model, tokenizer, candidates: list[str]) -> list[dict]:
    header = f"{'prefix':>6} {'L':>2} {'k':>3} | {'one call median (min-max)':>26} | " \
             f"{'L calls median (min-max)':>26} | {'speed-up':>8} | {'tokenise':>8}"
    print(header)
    print("-" * len(header))
    rows = []
    for length in args.prefixes:
        for drafts in args.chain:
            t = time_chain(model, tokenizer, length, drafts, candidates, args.repeats,
                           args.device)
            c, s, tok = summary(t["chunk"]), summary(t["steps"]), summary(t["tokenise"])
            ratio = s["median_s"] / c["median_s"]
            rows.append({"prefix_tokens": length, "drafts": drafts, "k": len(candidates),
                         "one_call": c, "per_position_calls": s, "tokenise": tok,
                         "speedup_median": ratio})
            print(f"{length:>6} {drafts:>2} {len(candidates):>3} | {fmt(c):>26} | {fmt(s):>26}"
                  f" | {ratio:>7.2f}x | {tok['median_s'] * 1e3:>5.1f} ms", flush=True)
    return rows


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(value: CheckpointValue, states: list[str], candidates: list[str],
               device: str) -> list[float]:
    """Seconds per step; the first state is a warm-up (with reuse: it builds the prefix cache,
    as the earlier steps of a real decode would have)."""
    value.reset()
    value.score("", states[0], candidates)
    times = []
    for state in states[1:]:
        sync(device)
        start = time.perf_counter()
        value.score("", state, candidates)
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def time_tokenise(tokenizer, states: list[str], candidates: list[str]) -> list[float]:
    """Seconds per step spent tokenising the k texts alone (host work that no device speeds
    up: prompt + response + candidate, re-tokenised every step)."""
    times = []
    for state in states[1:]:
        start = time.perf_counter()
        encode_batch(tokenizer, [state + c for c in candidates])
        times.append(time.perf_counter() - start)
    return times


def warm_up(tokenizer, reuse: CheckpointValue, full: CheckpointValue, candidates: list[str],
            device: str) -> None:
    """A few untimed short steps, so first-call costs (allocator, kernel selection) do not
    land in the first row."""
    states = decode_states(tokenizer, 32, 4)
    time_steps(reuse, states, candidates, device)
    time_steps(full, states[:2], candidates, device)


def summary(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    candidates = CANDIDATES[:args.k]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    if args.random_weights:
        from transformers import AutoConfig

        gguf = smollm2_gguf()
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model, tokenizer = build_value_model(config, lora_r=0, dtype=args.dtype)
    else:
        model, tokenizer = build_value_model("smollm2", lora_r=0, dtype=args.dtype)
    model.to(args.device).eval()
    reuse = CheckpointValue(model, tokenizer, "reuse", use_cache=True)
    full = CheckpointValue(model, tokenizer, "full", use_cache=False)
    if args.threads:  # after CheckpointValue, which applies the library's thread default
        torch.set_num_threads(args.threads)
    print(f"loaded SmolLM2 backbone{' (random weights)' if args.random_weights else ''} in {time.perf_counter() - t0:.1f} s "
          f"({dtype_name(model.backbone_dtype)}, {args.device}, {torch.get_num_threads()} threads)")

    warm_up(tokenizer, reuse, full, candidates, args.device)
    rows = chain_rows(args, model, tokenizer, candidates) if args.chain else \
        reuse_rows(args, tokenizer, reuse, full, candidates)

    if args.profile and not args.chain:
        from torch.profiler import ProfilerActivity, profile

        states = decode_states(tokenizer, args.prefixes[-1], 4)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                         if args.device.startswith("cuda") else [])
        time_steps(reuse, states[:2], candidates, args.device)
        with profile(activities=acts) as prof:
            time_steps(reuse, states, candidates, args.device)
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=18,
                                        max_name_column_width=48))

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "device": args.device, "dtype": args.dtype, "repeats": args.repeats,
            "random_weights": args.random_weights, "chain": args.chain,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
            "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")
    print(f"load average (1 min) before/after: {load_before:.2f}/{os.getloadavg()[0]:.2f}")
    return 0


def fmt(s: dict[str, float]) -> str:
    return f"{s['median_s'] * 1e3:.0f} ms ({s['min_s'] * 1e3:.0f}-{s['max_s'] * 1e3:.0f})"


if __name__ == "__main__":
    sys.exit(main())
