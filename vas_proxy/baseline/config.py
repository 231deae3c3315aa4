"""`vas-proxy baseline rl` flags, which are also the record of how a tuned model was made (saved
in its baseline.json). One dataclass, as TrainConfig is for `train`; the method-specific
defaults (beta, learning rate) live in `defaults.py` and are filled in by `resolved()`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .. import defaults
from ..errors import ConfigError
from ..options import ValueLoadOptions, option, option_like
from ..options.groups import REWARD_HELP, parse_rewards
from ..options.named_specs import parse_weights
from ..train.config import opt

METHODS = ("dpo", "grpo")


def _weights(text: str | None) -> dict[str, float] | None:
    return parse_weights(text) if text else None


@dataclass
class BaselineConfig:
    method: str = option(None, "dpo (offline, on preference pairs from --rollouts) or grpo "
                               "(online: samples from the policy as it trains)",
                         required=True, metavar="NAME")
    rewards: dict[str, str] = option(factory=dict, help=f"reward to tune for: {REWARD_HELP}; repeatable "
                                          "(a fixed mixture, see --weights)", flag="--reward",
                                     metavar="[NAME=]SPEC", repeat=True, parse=parse_rewards)
    out: str = option(None, "directory of the tuned model: adapter/, adapter.gguf, "
                            "baseline.json, metrics.jsonl, curves.png, checkpoints/",
                      required=True, metavar="DIR")
    rollouts: str | None = option(None, "dpo: a `vas-proxy train` run directory whose "
                                        "rollouts.jsonl gives the pairs (best vs worst response "
                                        "per prompt)", metavar="DIR")
    prompts: str | None = option(None, "grpo: training prompts JSONL (default: the prompts of "
                                       "--rollouts' run)", metavar="FILE")
    weights: dict[str, float] | None = option(None, "the mixture: weight per reward, each in "
                                                    "units of its sd over the data (default: 1 "
                                                    "each)", metavar="NAME=W,...",
                                              parse=_weights)
    beta: float | None = option(None, "strength: DPO's beta (default "
                                      f"{defaults.DPO_BETA}; smaller = further from the base) "
                                      "or GRPO's KL coefficient (default "
                                      f"{defaults.GRPO_BETA})", metavar="X")
    lr: float | None = option(None, f"AdamW learning rate (default {defaults.RL_LR})",
                              metavar="X")
    epochs: int = opt(defaults.DPO_EPOCHS, "dpo: passes over the pairs")
    batch_size: int = opt(defaults.DPO_BATCH, "dpo: pairs per step")
    steps: int = opt(defaults.GRPO_STEPS, "grpo: optimiser steps")
    generations: int = opt(defaults.GRPO_GENERATIONS, "grpo: samples per prompt (the group)")
    prompts_per_step: int = opt(defaults.GRPO_PROMPTS_PER_STEP, "grpo: prompts per step")
    max_tokens: int = opt(defaults.EVAL_MAX_TOKENS, "grpo: tokens per sampled response")
    # The value models' own LoRA (TrainConfig): the same trainable capacity on both sides
    lora_r: int = opt(16, "LoRA rank")
    lora_layers: int = opt(8, "LoRA on the top N layers only (0: all); the backward pass "
                                 "stops there, which makes CPU training several times faster")
    warmup: int = opt(5, "learning-rate warm-up steps")
    save_every: int = opt(25, "checkpoint every N steps (what --resume restarts from)")
    seed: int = opt(defaults.SEED, "seed of initialisation, data order and sampling")
    device: str = option_like(ValueLoadOptions, "device", help="device to train on")
    resume: bool = option(False, "continue the run in --out from its last checkpoint")
    quiet: bool = option(False, "no progress bars", short="-q")

    def check(self) -> None:
        rules = [(self.method in METHODS, f"--method must be one of {', '.join(METHODS)}"),
                 (bool(self.rewards), "--reward is required (at least one reward SPEC)"),
                 (self.method != "dpo" or self.rollouts is not None,
                  "--method dpo needs --rollouts DIR (a `vas-proxy train` run's rollouts)"),
                 (self.method != "grpo" or self.prompts or self.rollouts,
                  "--method grpo needs --prompts FILE (or --rollouts DIR, whose prompts it uses)"),
                 (self.beta is None or self.beta >= 0, "--beta must be >= 0"),
                 (self.lr is None or self.lr > 0, "--lr must be > 0"),
                 (min(self.epochs, self.batch_size, self.steps, self.prompts_per_step,
                      self.max_tokens, self.lora_r) >= 1,
                  "--epochs, --batch-size, --steps, --prompts-per-step, --max-tokens and "
                  "--lora-r must be >= 1"),
                 (self.generations >= 2, "--generations must be >= 2 (GRPO compares within "
                                         "a group)"),
                 (self.lora_layers >= 0 and self.warmup >= 0 and self.save_every >= 1,
                  "--lora-layers and --warmup must be >= 0, --save-every >= 1")]
        for ok, message in rules:
            if not ok:
                raise ConfigError(message)
        if self.method == "dpo" and self.beta == 0:
            raise ConfigError("--beta 0 is not DPO (its loss divides the preference by beta's "
                              "inverse); use a small positive beta")

    def resolved(self) -> BaselineConfig:
        """The config with the method's defaults filled in (what baseline.json records)."""
        beta = defaults.DPO_BETA if self.method == "dpo" else defaults.GRPO_BETA
        return replace(self, beta=beta if self.beta is None else self.beta,
                       lr=defaults.RL_LR if self.lr is None else self.lr)

    def to_dict(self) -> dict:
        return asdict(self)
