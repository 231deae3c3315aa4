"""`vas-proxy train`: sample rollouts through the black box, score them, fit a value model.

Phases, each resumable: (1) rollouts and validation half-completions from the upstream
(`collect`: stored, seeded, reused); the embedded upstream is stopped before training so the
CPU goes to the value model; (2) rewards; (3) TD(lambda) training with per-epoch held-out
validation, checkpoints, metrics and curves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .. import defaults
from ..options import UpstreamOptions, add_options, from_args
from .collect import collect
from .config import TrainConfig

RUN_FILE = "run.json"


def register(sub) -> None:
    """Add the `train` subcommand: TrainConfig's flags, and the upstream's key (kept out of the
    config, which is written to disk)."""
    p = sub.add_parser("train", help="train a value model on rollouts sampled from the upstream",
                       description=__doc__.split("\n\n")[0])
    add_options(p, TrainConfig)
    add_options(p, UpstreamOptions, only=["api_key"])
    p.set_defaults(func=_main)


async def _main(a: argparse.Namespace) -> int:
    await run(from_args(TrainConfig, a), api_key=from_args(UpstreamOptions, a).api_key)
    return 0


def check_config(cfg: TrainConfig) -> None:
    from ..errors import ConfigError
    from ..upstream.local import SERVERS

    rules = [(cfg.samples_per_prompt is None or cfg.samples_per_prompt >= 1,
              "--samples-per-prompt must be >= 1"),
             (cfg.budget is None or cfg.samples_per_prompt is None,
              "--budget picks --samples-per-prompt: pass one of them"),
             (cfg.max_tokens >= 1, "--max-tokens must be >= 1"),
             (cfg.epochs >= 0, "--epochs must be >= 0"),
             (cfg.min_steps >= 0, "--min-steps must be >= 0 (0: exactly --epochs)"),
             (cfg.epochs > 0 or not cfg.export, "--export needs a trained model: --epochs >= 1 "
                                                "(--epochs 0 only samples and scores)"),
             (cfg.batch_size >= 1, "--batch-size must be >= 1"),
             (cfg.grad_accum >= 1, "--grad-accum must be >= 1"),
             (cfg.lora_r >= 0, "--lora-r must be >= 0 (0: full fine-tune)"),
             (cfg.lora_layers >= 0, "--lora-layers must be >= 0 (0: all layers)"),
             (cfg.lr > 0 and cfg.head_lr_mult > 0, "--lr and --head-lr-mult must be > 0"),
             (0 <= cfg.heldout_frac < 1, "--heldout-frac must be in [0, 1)"),
             (cfg.val_completions >= 0, "--val-completions must be >= 0"),
             (cfg.concurrency >= 1, "--concurrency must be >= 1"),
             (cfg.save_every >= 0, "--save-every must be >= 0"),
             (0 <= cfg.lam <= 1 and 0 <= cfg.gamma <= 1, "--lambda and --gamma must be in [0, 1]"),
             (cfg.rare_weight >= 0, "--rare-weight must be >= 0 (0: off)"),
             (cfg.consistency >= 0, "--consistency must be >= 0 (0: off)"),
             (cfg.consistency_k >= 2 and cfg.consistency_states >= 1,
              "--consistency-k must be >= 2 and --consistency-states >= 1"),
             (cfg.branches >= 0 and cfg.branch_k >= 2,
              "--branches must be >= 0 and --branch-k >= 2"),
             (cfg.residual or not cfg.residual_words, "--residual-words needs --residual"),
             (not (cfg.residual and cfg.consistency),
              "--residual and --consistency do not combine: the consistency term's candidate "
              "states carry no reward read on their text"),
             (not ((cfg.consistency or cfg.branches) and cfg.no_logprobs),
              "--consistency and --branches need the rollouts' top-k logprobs: drop "
              "--no-logprobs")]
    for ok, message in rules:
        if not ok:
            raise ConfigError(message)
    if cfg.budget is not None:
        from .budget import parse_budget
        parse_budget(cfg.budget)  # a bad budget fails before anything loads
    if cfg.extra_rollouts is not None and not Path(cfg.extra_rollouts).expanduser().is_file():
        raise ConfigError(f"--extra-rollouts {cfg.extra_rollouts}: no such file")
    if cfg.embedded is not None and cfg.embedded not in SERVERS:
        raise ConfigError(f"--embedded {cfg.embedded!r}: use {' or '.join(SERVERS)}")
    if cfg.backbone not in ("smollm2", "tiny") and not Path(cfg.backbone).expanduser().is_dir():
        raise ConfigError(f"--backbone {cfg.backbone!r}: use smollm2, tiny or a transformers "
                          "model directory")


def resolve_samples(cfg: TrainConfig, n_prompts: int) -> TrainConfig:
    """The config with its samples per prompt settled: given, bought by --budget, or
    defaults.TRAIN_SAMPLES."""
    import dataclasses

    from .budget import parse_budget, plan

    if cfg.samples_per_prompt is not None:
        return cfg
    samples = defaults.TRAIN_SAMPLES
    if cfg.budget is not None:
        p = plan(parse_budget(cfg.budget), n_prompts, max_tokens=cfg.max_tokens,
                 epochs=cfg.epochs, heldout_frac=cfg.heldout_frac,
                 val_completions=cfg.val_completions,
                 extra_tokens=cfg.consistency_states * cfg.consistency_k if cfg.consistency else 0,
                 branches=cfg.branches * cfg.branch_k,
                 extra_rollouts=_extra_count(cfg), min_steps=cfg.min_steps,
                 rollouts_per_step=cfg.batch_size * cfg.grad_accum)
        _note(p.note, cfg)
        samples = p.samples_per_prompt
    return dataclasses.replace(cfg, samples_per_prompt=samples)


def _extra_count(cfg: TrainConfig) -> int:
    """About how many `--extra-rollouts` responses will be trained on: the file's records less
    the held-out prompts' share (read_eval_responses drops those), for --budget's plan."""
    if not cfg.extra_rollouts:
        return 0
    with Path(cfg.extra_rollouts).expanduser().open(encoding="utf-8") as f:
        records = sum(1 for line in f if line.strip())
    return round(records * (1 - cfg.heldout_frac))


def prepare_out_dir(path: str, flag: str = "--out") -> Path:
    """Create the run directory and prove it is writable, before any slow work."""
    from ..errors import ConfigError

    out = Path(path).expanduser()
    probe = out / ".vas-write-test"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot write to {flag} {out}: {reason}") from None
    return out


def _note(message: str, cfg: TrainConfig) -> None:
    if not cfg.quiet:
        print(message, file=sys.stderr, flush=True)


async def run(cfg: TrainConfig, api_key: str | None = None) -> dict:
    """The whole `vas-proxy train` run; returns a summary (steps, validation, paths)."""
    from .. import progress
    from ..errors import ConfigError
    from ..rewards import load_reward
    from .prompts import read_prompts

    # User errors first, before torch and transformers are even imported.
    check_config(cfg)
    items = read_prompts(cfg.prompts)
    cfg = resolve_samples(cfg, len(items))
    reward = load_reward(cfg.reward, device=cfg.device, quiet=cfg.quiet)
    out = prepare_out_dir(cfg.out)
    if cfg.export:
        prepare_out_dir(cfg.export, "--export")

    from .backbone import build_model
    from .report import CURVES_FILE, first_validation, heldout_corrs, write_curves
    from .rollouts import (BRANCHES_FILE, EXTRA_FILE, ROLLOUTS_FILE, VALIDATION_FILE,
                           HalfCompletions, JsonlStore, Rollout, read_eval_responses,
                           score_halves, score_rollouts)
    from ..values.callable import potential
    from .shaping import add_potentials
    from .td import make_example
    from .trainer import METRICS_FILE, STATE_FILE, Trainer, check_resume, export_checkpoint
    from .validation import evaluate
    from .verdict import Verdict, data_stats, judge

    if not cfg.resume and (out / STATE_FILE).exists():
        raise ConfigError(f"{out} already holds a training run: pass --resume to continue it, or "
                          f"choose another --out (copy {ROLLOUTS_FILE} there to reuse the samples)")
    if cfg.resume:
        check_resume(cfg, out)
    (out / RUN_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    rollouts, branches, held, halves, upstream_model = await collect(cfg, out, items, api_key)

    spec = cfg.reward
    score_rollouts(rollouts, reward, spec, JsonlStore(out / ROLLOUTS_FILE, Rollout),
                   progress=not cfg.quiet)
    by_key = {r.key: r for r in rollouts}
    score_halves(halves, by_key, reward, spec, JsonlStore(out / VALIDATION_FILE, HalfCompletions))
    train_rollouts = [r for r in rollouts if r.prompt_index not in held]
    held_rollouts = [r for r in rollouts if r.prompt_index in held]
    if branches:
        score_rollouts(branches, reward, spec, JsonlStore(out / BRANCHES_FILE, Rollout),
                       progress=not cfg.quiet)
        train_rollouts += branches
        _note(f"--branches: {len(branches)} branch rollouts trained on beside the "
              f"{len(train_rollouts) - len(branches)} rollouts", cfg)
    if cfg.extra_rollouts:
        extra = read_eval_responses(Path(cfg.extra_rollouts).expanduser(), rollouts)
        store = JsonlStore(out / EXTRA_FILE, Rollout)
        if all(spec in r.rewards for r in extra):  # nothing to score: score_rollouts won't write
            store.rewrite(extra)
        score_rollouts(extra, reward, spec, store, progress=not cfg.quiet)
        used = [r for r in extra if r.prompt_index not in held]
        train_rollouts += used
        _note(f"--extra-rollouts: {len(used)} responses trained on (reward "
              f"{np.mean([r.rewards[spec] for r in used]) if used else float('nan'):.3f} on "
              f"average), {len(extra) - len(used)} of held-out prompts left out", cfg)
    rewards = np.array([r.rewards[spec] for r in rollouts])
    _note(f"{len(rollouts)} rollouts ({len(train_rollouts)} train, {len(held_rollouts)} held out): "
          f"reward {rewards.mean():.3f} ± {rewards.std():.3f}, "
          f"{np.mean([len(r.response) for r in rollouts]):.0f} characters on average", cfg)

    if cfg.epochs == 0:  # sampling only: no model, so no verdict on an untrained one
        print(f"--epochs 0: {len(rollouts)} rollouts sampled and scored in {out}; train on "
              "them with --epochs N --resume", file=sys.stderr, flush=True)
        return {"out": str(out), "steps": 0, "validation": None, "verdict": None,
                "curves": None, "export": None}

    with progress.quiet_third_party(enabled=cfg.quiet):  # the backbone's bars and warnings
        model, tokenizer = build_model(cfg)
    examples = [make_example(tokenizer, r.upstream_prompt, r.response, r.rewards[spec])
                for r in train_rollouts]
    phi = potential(reward, cfg.residual_words) if cfg.residual else None
    if phi is not None:
        examples = add_potentials(tokenizer, examples, [r.upstream_prompt for r in train_rollouts],
                                  [r.response for r in train_rollouts], phi,
                                  progress=not cfg.quiet)
    if cfg.consistency:
        from .consistency import add_states
        examples = add_states(tokenizer, examples, train_rollouts, k=cfg.consistency_k,
                              states=cfg.consistency_states, seed=cfg.seed)
        _note(f"--consistency: {sum(len(e.states) for e in examples)} candidate states in "
              f"{len(examples)} rollouts", cfg)
    metadata = {"reward": spec, "trained_with": "vas-proxy train", "upstream_model": upstream_model,
                "train_rollouts": len(train_rollouts), "heldout_rollouts": len(held_rollouts),
                "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
                **({"residual": spec, "residual_words": cfg.residual_words}
                   if cfg.residual else {})}
    trainer = Trainer(cfg, model, tokenizer, examples, out, metadata=metadata,
                      evaluate=(lambda m: evaluate(m, tokenizer, held_rollouts, halves, spec,
                                                   potential=phi))
                      if held_rollouts else None,
                      judge=lambda metrics, losses: judge(
                          metrics, data_stats([e.reward for e in examples],
                                              [r.prompt_index for r in train_rollouts], losses,
                                              heldout_corrs(out / METRICS_FILE)),
                          samples_per_prompt=cfg.samples_per_prompt,
                          reward_alone=first_validation(out / METRICS_FILE) if cfg.residual
                          else None).to_dict())
    if trainer.epochs > cfg.epochs:
        _note(f"--min-steps {cfg.min_steps}: {trainer.epochs} epochs of "
              f"{trainer.steps_per_epoch} steps instead of --epochs {cfg.epochs}", cfg)
    if cfg.resume and trainer.restore():
        _note(f"resuming at step {trainer.progress.step} (epoch {trainer.progress.epoch})", cfg)
    validation = trainer.train()
    curves = write_curves(out / METRICS_FILE, out / CURVES_FILE)
    exported = export_checkpoint(out, cfg.export) if cfg.export else None
    verdict = Verdict(**trainer.metadata["verdict"])
    print(verdict.text(), file=sys.stderr, flush=True)  # the result itself, even with --quiet
    summary = {"out": str(out), "steps": trainer.progress.step, "validation": validation,
               "verdict": verdict.to_dict(),
               "curves": str(curves) if curves else None,
               "export": str(exported) if exported else None}
    _note(f"value model saved to {out} ({trainer.progress.step} steps); use it with "
          f"--value NAME={out}" + ("" if curves else " (matplotlib missing: no curves.png)")
          + f"; the beta for a KL budget: vas-proxy calibrate --value NAME={out} --prompts "
          "HELDOUT.jsonl --kl 2; what it is worth: one `vas-proxy eval` at that beta (summary.md's "
          "reward per nat; held-out figures do not predict it)", cfg)
    return summary
