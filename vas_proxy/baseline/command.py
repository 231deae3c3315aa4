"""`vas-proxy baseline rl`: fine-tune the embedded model with RL (TRL, LoRA), the alternative VAS
is measured against. DPO learns from the preference pairs in `train`'s black-box rollouts; GRPO
samples from the policy as it learns. The result is a tuned-model directory that
`vas-proxy eval --tuned NAME=DIR` and `--adapter DIR/adapter.gguf` serve through llama.cpp.

This needs the model's weights, which VAS never does: that is the point of the comparison.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import time
from dataclasses import replace
from pathlib import Path

from ..errors import ConfigError
from ..options import add_options, from_args
from .config import BaselineConfig

PAIRS_FILE = "pairs.jsonl"


def register(sub) -> None:
    p = sub.add_parser("baseline", help="RL baselines: fine-tune the embedded model (DPO, GRPO)",
                       description=__doc__.split("\n\n")[0])
    kinds = p.add_subparsers(dest="baseline", required=True, metavar="KIND")
    rl = kinds.add_parser("rl", help="DPO or GRPO with LoRA on the embedded SmolLM2",
                          description=__doc__.split("\n\n")[0])
    add_options(rl, BaselineConfig)
    rl.set_defaults(func=_main)


def _main(a: argparse.Namespace) -> int:
    run(from_args(BaselineConfig, a))
    return 0


def run(cfg: BaselineConfig) -> Path:
    """Train, convert and describe one tuned model; returns its directory."""
    from .export import ADAPTER_GGUF, META_FILE, converter

    cfg.check()
    cfg = cfg.resolved()
    out = Path(cfg.out).expanduser()
    if (out / ADAPTER_GGUF).is_file() and (out / META_FILE).is_file():
        if not cfg.resume:
            raise ConfigError(f"{out} already holds a tuned model; choose another --out")
        _say(cfg, f"{out}: already done")
        return out
    if (out / "checkpoints").is_dir() and not cfg.resume:
        raise ConfigError(f"{out} holds a started run: pass --resume to continue it, or "
                          "choose another --out")
    converter()  # missing tooling fails now, not after the training
    if importlib.util.find_spec("trl") is None:
        raise ConfigError("the RL baselines need TRL: pip install 'vas_proxy[rl]'")
    out.mkdir(parents=True, exist_ok=True)
    data = _data(cfg, out)

    import torch

    from .policy import load_policy, load_tokenizer, lora_config

    torch.manual_seed(cfg.seed)
    _say(cfg, "loading the policy (the embedded SmolLM2, dequantized)")
    model, tokenizer = load_policy(), load_tokenizer()
    peft_config = lora_config(model, cfg.lora_r, cfg.lora_layers)
    t0 = time.perf_counter()
    if cfg.method == "dpo":
        from .fit import fit_dpo

        trainer = fit_dpo(cfg, model, tokenizer, data["pairs"], out, peft_config)
    else:
        from .fit import fit_grpo

        trainer = fit_grpo(cfg, model, tokenizer, data["prompts"], data["reward_fn"], out,
                           peft_config)
    seconds = time.perf_counter() - t0
    return _finish(cfg, out, trainer, data, seconds)


def _data(cfg: BaselineConfig, out: Path) -> dict:
    """Pairs (DPO) or prompts and a reward function (GRPO), and the mixture they use."""
    from ..rewards import load_reward
    from .data import mixture, preference_pairs, read_rollouts, score_rollouts

    rewards = {n: load_reward(s, quiet=cfg.quiet) for n, s in cfg.rewards.items()}
    rollouts = read_rollouts(cfg.rollouts) if cfg.rollouts else []
    scores = score_rollouts(rollouts, rewards, cfg.rewards) if rollouts else \
        {n: [1.0] for n in cfg.rewards}  # no data to measure spreads on: raw units
    mix = mixture(cfg.rewards, cfg.weights, scores)
    info = {"mixture": mix.describe(), "base_rollouts": len(rollouts)}
    if cfg.method == "dpo":
        pairs = preference_pairs(rollouts, mix.combine(scores))
        with (out / PAIRS_FILE).open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
        _say(cfg, f"{len(pairs)} preference pairs from {len(rollouts)} rollouts "
                  f"({len({r.prompt_index for r in rollouts})} prompts)")
        return {**info, "pairs": pairs}
    items = _prompt_items(cfg)

    def reward_fn(prompts, completions, reward_prompt, **_):
        scored = {n: list(r(list(reward_prompt), list(completions))) for n, r in rewards.items()}
        return [float(x) for x in mix.combine(scored)]

    reward_fn.__name__ = "+".join(cfg.rewards)  # TRL logs rewards under the function's name
    return {**info, "prompts": [{"prompt": p.upstream, "reward_prompt": p.text} for p in items],
            "reward_fn": reward_fn}


def _prompt_items(cfg: BaselineConfig):
    from ..templates import from_gguf
    from ..train.prompts import read_prompts, render_prompts
    from .policy import base_gguf

    path = cfg.prompts
    if path is None:
        run_json = Path(cfg.rollouts) / "run.json"
        try:
            path = json.loads(run_json.read_text())["prompts"]
        except (OSError, ValueError, KeyError):
            raise ConfigError(f"cannot tell the prompts of {cfg.rollouts} (no run.json): pass "
                              "--prompts") from None
    return render_prompts(read_prompts(path), from_gguf(str(base_gguf())))


def _finish(cfg: BaselineConfig, out: Path, trainer, data: dict, seconds: float) -> Path:
    from .export import ADAPTER_DIR, ADAPTER_GGUF, plot_curves, to_gguf, write_meta
    from .fit import METRICS_FILE
    from .policy import base_gguf

    trainer.model.save_pretrained(str(out / ADAPTER_DIR))
    _say(cfg, "converting the adapter to GGUF (llama.cpp's convert_lora_to_gguf.py)")
    to_gguf(out / ADAPTER_DIR, trainer.model.config, out / ADAPTER_GGUF)
    metrics = [json.loads(line) for line in
               (out / METRICS_FILE).read_text().splitlines() if line.strip()]
    state = trainer.state
    per_step = cfg.prompts_per_step * cfg.generations
    sampled = state.global_step * per_step if cfg.method == "grpo" else 0
    title = (f"{cfg.method.upper()} beta={cfg.beta:g} on {'+'.join(cfg.rewards)}")
    plot_curves(out, metrics, title)
    versions = {k: importlib.metadata.version(k) for k in ("trl", "transformers", "peft",
                                                           "torch")}
    write_meta(out, {
        "method": cfg.method, "beta": cfg.beta, "rewards": cfg.rewards,
        "mixture": data["mixture"], "base_model": base_gguf().name,
        "config": replace(cfg, resume=False, quiet=False).to_dict(),
        "cost": {"train_seconds": seconds, "steps": state.global_step,
                 "base_rollouts": data["base_rollouts"], "policy_samples": sampled,
                 "pairs": len(data.get("pairs", []))},
        "final": metrics[-1] if metrics else {}, "versions": versions})
    print(f"tuned model: {out} ({cfg.method}, beta {cfg.beta:g}, {state.global_step} steps, "
          f"{seconds / 60:.1f} min); evaluate it with `vas-proxy eval --tuned NAME={out} ...`")
    return out


def _say(cfg: BaselineConfig, message: str) -> None:
    if not cfg.quiet:
        print(message, flush=True)
