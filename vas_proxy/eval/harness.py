"""Run the settings on the same prompts and seeds, one record per generation.

Base and VAS generations go through the one engine (base = beta 0, whose target is exactly the
upstream's top-k distribution), on the prompt as `serve` would continue it (`Runtime.prepare_item`:
token ids where the upstream tokenises); Best-of-N through `bestofn.best_of_n` (plain
completions of the same prompt from the same top-k base where the upstream can sample it).
Every setting sees prompt i with the same seed, so settings can be compared pair by pair.
Records are appended to `results.jsonl` as they finish, so a long run can be resumed (`--resume`).

KL to the base: for base and VAS, `Generation.kl` = Σ over steps of log q − log p of the chosen
token (p = the upstream's top-k renormalised): an unbiased estimate of KL(q‖p) of the whole
response; `kl_path` = Σ over the same steps of KL(q‖p) at the state, the same expectation
without the noise of the draw (the report uses it where every record of a row has it). For
Best-of-N, the analytic bound log N − (N−1)/N (`kl_kind` = "bound"); for Best-of-N over VAS
samples, that bound plus the winner's own estimate (`bestof_modes.hybrid_kl`, also
"bound"). Value-pruned Best-of-N claims none.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

from .. import progress
from ..bestof_modes import guided_best_of_n, pruned_best_of_n
from ..bestofn import base_top_k, best_of_n, kl_bound, pruning_prompt, sample_prompt
from ..engine import GenerationRequest
from ..errors import ConfigError
from ..options import CacheOptions, GuidanceOptions, UpstreamOptions, ValueLoadOptions
from ..prompting import Prepared
from ..runtime import Options, Runtime, load_rewards, open_runtime
from ..train.prompts import PromptItem, read_prompts, render_prompts
from ..usage import Usage
from .config import EvalConfig, Setting
from .files import CONFIG_FILE, RESULTS_FILE, TIMINGS_FILE, read_json, read_records

# What must not change between runs resumed into one directory (settings may be added).
_SAME_ON_RESUME = ("prompts", "max_tokens", "top_k", "seed", "samples", "provider", "upstream",
                   "model", "chat_template", "continuation", "embedded")


def prepare(cfg: EvalConfig) -> tuple[Path, list[dict], dict]:
    """Check the config and the output directory before anything slow; returns the directory,
    the records already there (resume) and the rewards."""
    cfg.check()
    if cfg.tuned:
        from ..baseline.export import read_meta

        for path in cfg.tuned.values():
            read_meta(path)  # not a finished tuned model: fail before anything starts
    items = read_prompts(cfg.prompts)
    rewards = load_rewards(cfg.rewards, device=cfg.device, verbose=not cfg.quiet)
    out = Path(cfg.out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    records: list[dict] = []
    if (out / RESULTS_FILE).exists():
        if not cfg.resume:
            raise ConfigError(f"{out} already holds {RESULTS_FILE}: pass --resume to add to it "
                              "(done generations are skipped) or choose another --out")
        _check_resume(cfg, out)
        records = read_records(out / RESULTS_FILE)
    saved = cfg.to_dict()
    old = json.loads((out / CONFIG_FILE).read_text()) \
        if cfg.resume and (out / CONFIG_FILE).exists() else {}
    # keep every value/reward ever used, and every command that added to the directory
    saved["values"] = {**old.get("values", {}), **cfg.values}
    saved["rewards"] = {**old.get("rewards", {}), **cfg.rewards}
    saved["tuned"] = {**old.get("tuned", {}), **cfg.tuned}
    saved["command"] = " ".join(sys.argv)
    saved["commands"] = [*old.get("commands", [old["command"]] if "command" in old else []),
                         saved["command"]]
    (out / CONFIG_FILE).write_text(json.dumps(saved, indent=2) + "\n")
    return out, records, {"items": items[:cfg.limit] if cfg.limit else items, "rewards": rewards}


def _check_resume(cfg: EvalConfig, out: Path) -> None:
    path = out / CONFIG_FILE
    if not path.exists():
        return
    old = json.loads(path.read_text())
    new = cfg.to_dict()
    for key in _SAME_ON_RESUME:
        if key in old and old[key] != new.get(key):  # (absent: a run from before the key)
            raise ConfigError(f"--resume: {key} was {old.get(key)!r} in {out}, now "
                              f"{new.get(key)!r}; results would not be comparable")
    for kind in ("values", "rewards", "tuned"):
        for name, spec in new.get(kind, {}).items():
            if name in old.get(kind, {}) and old[kind][name] != spec:
                what = {"values": "value", "rewards": "reward", "tuned": "tuned model"}[kind]
                raise ConfigError(f"--resume: {what} {name!r} was {old[kind][name]!r} in "
                                  f"{out}, now {spec!r}; use another name")


def _rescore(out: Path, records: list[dict], rewards: dict) -> None:
    """Score earlier records (resume) with rewards added since they were written."""
    missing = [(r, name) for r in records for name in rewards if name not in r["rewards"]]
    if not missing:
        return
    for r, name in missing:
        r["rewards"][name] = rewards[name]([r["prompt"]], [r["response"]])[0]
    tmp = out / (RESULTS_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(out / RESULTS_FILE)


def seed_for(cfg: EvalConfig, prompt_index: int, sample: int, n_prompts: int) -> int:
    """Prompt i, sample j gets the same seed in every setting (paired comparisons)."""
    return cfg.seed + sample * n_prompts + prompt_index


async def run(cfg: EvalConfig, api_key: str | None = None) -> Path:
    """The whole evaluation; returns the output directory (see `report` for what it holds).
    `api_key` is the upstream's, kept out of the config that is written to disk."""
    from .report import write_report

    out, records, loaded = prepare(cfg)
    items, rewards = loaded["items"], loaded["rewards"]
    _rescore(out, records, rewards)
    done = {(r["setting"], r["prompt_index"], r["sample"]) for r in records}
    settings = cfg.settings()
    needs_values = any(s.method in ("vas", "pbon", "gbon") for s in settings)
    opts = Options(upstream=UpstreamOptions(url=cfg.upstream, model=cfg.model,
                                            provider=cfg.provider, api_key=api_key,
                                            timeout=cfg.timeout, chat_template=cfg.chat_template,
                                            continuation=cfg.continuation,
                                            embedded=cfg.embedded),
                   guidance=GuidanceOptions(values=dict(cfg.values) if needs_values else {},
                                            beta=0.0, top_k=cfg.top_k, speculate=cfg.speculate),
                   loading=ValueLoadOptions(device=cfg.device, dtype=cfg.dtype),
                   cache=CacheOptions(use_cache=False),  # cost is what we measure: no cache
                   verbose=not cfg.quiet)
    main = [s for s in settings if s.method != "tuned"]
    if main:
        async with open_runtime(opts) as rt:
            # Whole calls: a cancelled stream's bill is not the upstream's to see
            # (docs/design.md §3.5), and cost is what an evaluation measures.
            rt.engine.overlap = False
            for s in main:  # unknown weights etc. fail now, not after an hour
                if s.method in ("vas", "pbon", "gbon"):
                    rt.engine.resolve({"beta": s.beta, "weights": s.weights_dict})
            await _drive(cfg, rt, main, items, done, rewards, out)
    for s in settings:
        if s.method == "tuned" and any(
                (s.name, i, j) not in done for i in range(len(items)) for j in range(cfg.samples)):
            await _drive_tuned(cfg, opts, s, items, done, rewards, out)
    write_report(out, quiet=cfg.quiet)
    return out


async def _drive_tuned(cfg: EvalConfig, opts: Options, s: Setting, items, done, rewards,
                       out: Path) -> None:
    """A tuned model's rows: the embedded llama-server with its adapter, sampled as base is
    (the engine at beta 0), each response's KL to the base measured with the weights."""
    from dataclasses import replace

    from ..baseline.export import ADAPTER_DIR, ADAPTER_GGUF
    from ..baseline.scorer import TunedScorer

    folder = Path(cfg.tuned[s.tuned]).expanduser()
    with progress.quiet_third_party(enabled=cfg.quiet):  # nothing else runs yet: block
        scorer = TunedScorer(folder / ADAPTER_DIR)
    tuned_opts = replace(opts, upstream=replace(opts.upstream, adapter=str(folder / ADAPTER_GGUF)),
                         guidance=replace(opts.guidance, values={}))
    async with open_runtime(tuned_opts) as rt:
        rt.engine.overlap = False
        await _drive(cfg, rt, [s], items, done, rewards, out, scorer=scorer)


async def _drive(cfg: EvalConfig, rt: Runtime, settings: list[Setting], items, done: set,
                 rewards: dict, out: Path, scorer=None) -> None:
    """Run what is left of `settings` on `rt`, appending records and timings as they finish."""
    prompts = render_prompts(items, rt.template)
    prepared = {p.index: await rt.prepare_item(p) for p in prompts}
    stop = rt.template.stop_strings if rt.template else []
    units = work_units(settings, prompts, cfg.samples, done,
                       pool=not rt.engine.upstream.profile.accepts_n)
    timings = read_json(out / TIMINGS_FILE)
    bar = _progress(sum(len(u[1]) for u in units), cfg.quiet)
    try:
        with (out / RESULTS_FILE).open("a", encoding="utf-8") as f:
            for label in dict.fromkeys(u[0] for u in units):
                mine = [u for u in units if u[0] == label]
                bar.set_description(label)
                t0 = time.perf_counter()
                gate = asyncio.Semaphore(cfg.concurrency)

                async def one(group: list[Setting], p: PromptItem, j: int, label=label):
                    seed = seed_for(cfg, p.index, j, len(prompts))
                    kw = dict(max_tokens=cfg.max_tokens, top_k=cfg.top_k)
                    async with gate:
                        kw["prep"] = prepared[p.index]
                        if label == POOL:
                            recs = await generate_pool(rt, group, p, seed, rewards, stop, **kw)
                        else:
                            recs = [await generate(rt, group[0], p, seed, rewards, stop,
                                                   scorer=scorer, **kw)]
                    for rec in recs:
                        rec["sample"] = j
                        f.write(json.dumps(rec) + "\n")
                    f.flush()
                    bar.update(len(recs))

                await asyncio.gather(*(one(group, p, j) for _, group, p, j in mine))
                timings[label] = timings.get(label, 0.0) + time.perf_counter() - t0
                (out / TIMINGS_FILE).write_text(json.dumps(timings, indent=2) + "\n")
    finally:
        bar.close()


POOL = "bon pool"


def work_units(settings: list[Setting], prompts: list[PromptItem], samples: int, done: set,
               *, pool: bool) -> list[tuple[str, list[Setting], PromptItem, int]]:
    """(label, settings, prompt, sample) still to run, in the settings' order. With `pool`
    (an upstream without `n`), every plain Best-of-N setting of a prompt and sample comes from
    ONE Best-of-max(N) run: sample i has the same upstream seed in every N (`sample_seeds`), so
    Best-of-m is exactly the first m samples of Best-of-n (a pool, labelled "bon pool")."""
    units = []
    pooled = [s for s in settings if pool and s.method == "bon"]
    for s in settings:
        if s in pooled:
            if s is pooled[0]:
                for p in prompts:
                    for j in range(samples):
                        missing = [b for b in pooled if (b.name, p.index, j) not in done]
                        if missing:
                            units.append((POOL, missing, p, j))
            continue
        units += [(s.name, [s], p, j) for p in prompts for j in range(samples)
                  if (s.name, p.index, j) not in done]
    return units


async def generate_pool(rt: Runtime, group: list[Setting], p: PromptItem, seed: int,
                        rewards: dict, stop: list[str], *, max_tokens: int, top_k: int,
                        prep: Prepared) -> list[dict]:
    """The records of every Best-of-N setting in `group` from one Best-of-max(N) run: each
    Best-of-m is billed its first m calls (a fresh Usage counts them, so shared prefixes are
    priced as if it ran alone) and waits the sum of their seconds (one call at a time: what a
    one-slot server such as llama.cpp does with concurrent calls anyway)."""
    n = max(s.best_of for s in group)
    res = await best_of_n(rt.engine.upstream, sample_prompt(prep.text, prep.upstream), n=n,
                          reward=rewards[group[0].bon_reward], reward_prompt=p.text,
                          max_tokens=max_tokens, stop=stop, seed=seed,
                          top_k=base_top_k(rt.engine.upstream, top_k), concurrency=1)
    scored: dict[str, dict] = {}
    out = []
    for s in group:
        m = s.best_of
        best = int(np.argmax(res.scores[:m]))
        usage = Usage()
        for r in res.results[:m]:
            usage.count(r)
        usage.prompt_tokens = res.results[best].prompt_tokens
        usage.completion_tokens = res.results[best].completion_tokens
        usage.upstream_seconds = sum(res.seconds[:m])
        usage.scoring_seconds = res.usage.scoring_seconds * m / n
        text = res.texts[best]
        if text not in scored:
            scored[text] = await _scores(rewards, p, text)
        finish = "stop" if res.results[best].finish_reason == "stop" else "length"
        out.append(_record(s, p, seed, text, finish, scored[text], kl_bound(m), "bound", usage,
                           usage.upstream_seconds + usage.scoring_seconds,
                           {"bon_scores": res.scores[:m], "bon_chosen": best, "bon_pool": n}))
    return out


async def generate(rt: Runtime, s: Setting, p: PromptItem, seed: int, rewards: dict,
                   stop: list[str], *, max_tokens: int, top_k: int,
                   prep: Prepared | None = None, scorer=None) -> dict:
    """One generation of setting `s` for prompt `p`, scored by every reward: the record that
    `results.jsonl` holds (also what `vas-proxy demo` prints). `prep`: `p` as
    `Runtime.prepare_item` makes it (made here when not given)."""
    t0 = time.perf_counter()
    prep = prep or await rt.prepare_item(p)
    extra: dict = {}
    kl, kl_kind = None, "none"
    if s.is_best_of:
        kw = dict(n=s.best_of, reward=rewards[s.bon_reward], reward_prompt=p.text)
        if s.method == "bon":
            res = await best_of_n(rt.engine.upstream, sample_prompt(prep.text, prep.upstream),
                                  max_tokens=max_tokens, stop=stop, seed=seed,
                                  top_k=base_top_k(rt.engine.upstream, top_k), concurrency=2,
                                  **kw)
        elif s.method == "pbon":
            res = await pruned_best_of_n(rt.engine.upstream,
                                         pruning_prompt(prep.text, prep.upstream),
                                         values=rt.engine.values, value_prompt=prep.text,
                                         weights=s.weights_dict or None, max_tokens=max_tokens,
                                         block=s.prune_block, keep=s.prune_keep, stop=stop,
                                         top_k=base_top_k(rt.engine.upstream, top_k),
                                         seed=seed, concurrency=2, **kw)
        else:
            req = GenerationRequest(prompt=prep.text, upstream_prompt=prep.upstream,
                                    max_tokens=max_tokens, seed=seed,
                                    guidance=rt.engine.resolve(
                                        {"beta": s.beta, "weights": s.weights_dict or None}))
            res = await guided_best_of_n(rt.engine, req, concurrency=1, **kw)
        text, finish, usage = res.text, res.finish_reason, res.usage
        kl, kl_kind = res.kl, res.kl_kind
        extra = {"bon_scores": res.scores, "bon_chosen": res.index,
                 **({"bon_details": res.details} if s.method == "pbon" else {}),
                 **({"bon_kls": res.details["kl"]} if s.method == "gbon" else {})}
    else:
        guidance = rt.engine.resolve({"beta": s.beta, "weights": s.weights_dict or None}
                                     if s.method == "vas" else {"beta": 0.0})
        g = await rt.engine.generate(GenerationRequest(
            prompt=prep.text, upstream_prompt=prep.upstream, max_tokens=max_tokens, seed=seed,
            guidance=guidance))
        text, finish, usage = g.text, g.finish_reason, g.usage
        kl, kl_kind = g.kl, "estimate"
        if s.method != "tuned":  # (a tuned row's g is against the tuned model itself)
            extra["kl_path"] = g.path_kl
    seconds = time.perf_counter() - t0  # (a tuned row's KL below is measurement, not serving)
    if s.method == "tuned":  # g.kl is against the tuned model itself: measure the base's
        kl = await asyncio.to_thread(scorer.kl, prep.text, text, finish == "stop")
        kl_kind = "exact"
    return _record(s, p, seed, text, finish, await _scores(rewards, p, text), kl, kl_kind,
                   usage, seconds, extra)


async def _scores(rewards: dict, p: PromptItem, text: str) -> dict[str, float]:
    return {name: (await asyncio.to_thread(r, [p.text], [text]))[0]
            for name, r in rewards.items()}


def _record(s: Setting, p: PromptItem, seed: int, text: str, finish: str, scores: dict,
            kl, kl_kind: str, usage: Usage, seconds: float, extra: dict) -> dict:
    return {"setting": s.name, "method": s.method, "beta": s.beta,
            "weights": s.weights_dict, "best_of": s.best_of if s.is_best_of else None,
            "bon_reward": s.bon_reward or None, "prompt_index": p.index, "seed": seed,
            "prompt": p.text, "response": text, "finish_reason": finish,
            "rewards": scores, "kl": kl, "kl_kind": kl_kind, **usage.record_dict(),
            "seconds": seconds,
            **({"prune_block": s.prune_block, "prune_keep": s.prune_keep}
               if s.method == "pbon" else {}), **extra}


def _progress(total: int, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="gen", disable=quiet, file=sys.stderr, dynamic_ncols=True)
