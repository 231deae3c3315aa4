"""`vas-proxy train --budget`: how many samples per prompt a run can afford, picked for the user.

A budget is minutes ("45m", "1.5h") or rollouts ("2000"). Rollouts buy the most: the value
model's held-out quality grows with samples per prompt (README, "The bundled value models"),
so the planner spends the budget on them at the recipe's epochs, from the throughputs this
machine measured (`benchmarks/bench_train.py`, `benchmarks/bench_servers.py`). They are
estimates: the plan is printed with them, and a faster machine simply finishes early.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import ConfigError

# Planning rates, measured on the 2-core CPU (README "Training costs", "llama-server vs
# llama-cpp-python"): the embedded llama-server samples ~33 tokens/s at 2 requests in flight;
# TD training of LoRA on the top 8 layers runs ~540 tokens/s (batch 8 x ~90 tokens, 1.33 s).
ROLLOUT_TOKENS_PER_S = 30.0
TRAIN_TOKENS_PER_S = 500.0
PROMPT_TOKENS = 60  # a chat prompt as the value model reads it (template included)
MIN_SAMPLES, MAX_SAMPLES = 4, 64

_MINUTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|mins|minutes|h|hours?)\s*$", re.I)
_ROLLOUTS = re.compile(r"^\s*(\d+)\s*(rollouts?)?\s*$", re.I)


@dataclass(frozen=True)
class Budget:
    minutes: float | None = None
    rollouts: int | None = None


def parse_budget(text: str) -> Budget:
    """'45m', '1.5h' (minutes) or '2000' / '2000 rollouts'."""
    m = _MINUTES.match(text or "")
    if m:
        value = float(m.group(1)) * (60 if m.group(2).lower().startswith("h") else 1)
        if value > 0:
            return Budget(minutes=value)
    m = _ROLLOUTS.match(text or "")
    if m and int(m.group(1)) > 0:
        return Budget(rollouts=int(m.group(1)))
    raise ConfigError(f"--budget {text!r}: give minutes (45m, 1.5h) or a number of rollouts "
                      "(2000)")


@dataclass(frozen=True)
class Plan:
    samples_per_prompt: int
    minutes: float  # the estimate for the whole run
    note: str


def minutes_for(samples: int, prompts: int, *, max_tokens: int, epochs: int,
                heldout_frac: float, val_completions: int, extra_tokens: int = 0,
                branches: int = 0, extra_rollouts: int = 0, min_steps: int = 0,
                rollouts_per_step: int = 8) -> float:
    """Estimated minutes of a run: rollouts, validation completions, training. `extra_tokens`
    per rollout are trained beside its own (`--consistency`'s candidate states: about states x
    k; measured, 1.5x the step time at 8 x 6 on 48-token rollouts, as the token count says);
    `branches` rollouts per training prompt (`--branches` x `--branch-k`) are sampled from
    half-way on average and trained on at full length; `extra_rollouts` (`--extra-rollouts`)
    are trained on, never sampled. Training runs at least `min_steps` optimiser steps of
    `rollouts_per_step` (batch x accumulation) rollouts, as `trainer.epochs_for` does."""
    rollouts = samples * prompts
    sampled = rollouts * max_tokens
    sampled += heldout_frac * rollouts * val_completions * max_tokens / 2
    branched = (1 - heldout_frac) * prompts * branches
    sampled += branched * max_tokens / 2
    own, other = (1 - heldout_frac) * rollouts, branched + extra_rollouts
    if epochs and own + other > 0:
        epochs = max(epochs, math.ceil(min_steps / math.ceil((own + other) / rollouts_per_step)))
    trained = epochs * (own * (PROMPT_TOKENS + max_tokens + extra_tokens)
                        + other * (PROMPT_TOKENS + max_tokens))
    return (sampled / ROLLOUT_TOKENS_PER_S + trained / TRAIN_TOKENS_PER_S) / 60


def plan(budget: Budget, prompts: int, *, max_tokens: int, epochs: int, heldout_frac: float,
         val_completions: int, extra_tokens: int = 0, branches: int = 0,
         extra_rollouts: int = 0, min_steps: int = 0, rollouts_per_step: int = 8) -> Plan:
    """Samples per prompt for `budget` over `prompts` prompts (clamped to 4..64)."""
    cost = dict(max_tokens=max_tokens, epochs=epochs, heldout_frac=heldout_frac,
                val_completions=val_completions, extra_tokens=extra_tokens, branches=branches,
                extra_rollouts=extra_rollouts, min_steps=min_steps,
                rollouts_per_step=rollouts_per_step)
    if budget.rollouts is not None:
        wanted = budget.rollouts // max(prompts, 1)
        why = f"{budget.rollouts} rollouts over {prompts} prompts"
    else:
        # the most samples that fit (the cost rises with them; the step floor makes it a curve)
        wanted = 0
        while (wanted < MAX_SAMPLES + 1
               and minutes_for(wanted + 1, prompts, **cost) <= budget.minutes):
            wanted += 1
        why = f"{budget.minutes:g} minutes over {prompts} prompts"
    samples = min(max(wanted, MIN_SAMPLES), MAX_SAMPLES)
    minutes = minutes_for(samples, prompts, **cost)
    note = f"--budget: {why} buys {samples} samples per prompt (~{minutes:.0f} min estimated)"
    if wanted < MIN_SAMPLES:
        note += (f"; the budget buys only {max(wanted, 0)}, fewer than the {MIN_SAMPLES} a value "
                 "model needs: raised to that")
    elif wanted > MAX_SAMPLES:
        note += f"; capped at {MAX_SAMPLES}: add prompts to use the rest of the budget"
    return Plan(samples, minutes, note)
