"""One dataclass that is at once the training configuration, its documentation and the
`vas-proxy train` flags (an option group: vas_proxy/options; `flag` overrides a flag's name).

It is saved into every checkpoint's metadata (and run.json), so a checkpoint says how it was
made: field names are part of that record. The upstream and device options are the upstream
and value-loading groups' own (`option_like`), so their defaults cannot drift; the training
hyperparameters are defined here and nowhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .. import defaults
from ..errors import ConfigError
from ..options import UpstreamOptions, ValueLoadOptions, option, option_like

_METAVARS = {int: "N", float: "X"}


def opt(default: Any, help: str, **extra: Any):
    """An `option()` whose metavar says what it takes: N (integer), X (number), else NAME."""
    if not isinstance(default, bool):  # a switch takes no value
        extra.setdefault("metavar", _METAVARS.get(type(default), "NAME"))
    return option(default, help, **extra)


def _upstream(name: str, **changes: Any):
    return option_like(UpstreamOptions, name, **changes)


@dataclass
class TrainConfig:
    prompts: str = opt(None, "prompts JSONL: one object per line with \"prompt\" (raw text, sent "
                             "as is) or \"messages\" (a chat; the chat template is applied)",
                       required=True, metavar="FILE")
    reward: str = opt(None, "reward SPEC: vader, plain, concise, interests:FILE, "
                            "py:module:function or hf:PATH",
                      required=True, metavar="SPEC")
    out: str = opt(None, "run directory: rollouts, metrics, curves, checkpoints; the final "
                         "value model is written at its top (load it with --value NAME=DIR)",
                   required=True, metavar="DIR")
    upstream: str | None = _upstream("url")
    model: str | None = _upstream("model")
    provider: str = _upstream("provider", metavar="NAME")
    chat_template: str | None = _upstream("chat_template", help="chatml, a .gguf, a tokenizer "
                                          "dir or a Jinja file (default: the embedded model's "
                                          "own)")
    timeout: float = _upstream("timeout", metavar="X")
    embedded: str | None = _upstream("embedded", metavar="NAME")
    backbone: str = opt("smollm2", "value-model backbone: smollm2 (the bundled GGUF), a "
                                   "transformers model directory, or tiny (a tiny random model "
                                   "for tests)")
    samples_per_prompt: int | None = opt(None, "responses sampled per prompt (default: "
                                               f"{defaults.TRAIN_SAMPLES}, or what --budget "
                                               "buys)", metavar="N")
    budget: str | None = opt(None, "spend this on the run: minutes (45m, 1.5h) or rollouts "
                                   "(2000); picks --samples-per-prompt from this machine's "
                                   "measured rates and prints the plan", metavar="BUDGET")
    max_tokens: int = opt(48, "tokens per response (the horizon the values predict over)")
    extra_rollouts: str | None = opt(None, "also train on the responses of a `vas-proxy eval` "
                                           "results.jsonl run on the same --prompts (e.g. "
                                           "guided ones: an on-policy round); those of held-out "
                                           "prompts are left out", metavar="FILE")
    no_logprobs: bool = opt(False, "store rollouts without their tokens' logprobs: ~3x faster on "
                                   "llama-cpp-python (it sorts the whole vocabulary in Python for "
                                   "each logprob it reports); training reads only the text")
    concurrency: int = opt(defaults.TRAIN_CONCURRENCY, "upstream requests in flight (and the "
                                                       "embedded llama-server's slots)")
    epochs: int = opt(6, "passes over the training rollouts (6 beat 3 on 32 prompts and "
                         "were level on 209: docs/training/ablation, epochs64); more when "
                         "--min-steps asks for them")
    min_steps: int = opt(384, "train at least this many optimiser steps: a run with few "
                              "rollouts takes more epochs than --epochs (384: 6 epochs of 512 "
                              "rollouts; docs/training/steps; 0: exactly --epochs)")
    lora_r: int = opt(16, "LoRA rank (0: full fine-tune)")
    lora_layers: int = opt(8, "put LoRA on the top N transformer layers only (0: all); the "
                              "backward pass then stops there, which makes CPU training faster")
    lr: float = opt(5e-4, "AdamW learning rate (peak; linear warm-up, cosine decay to 10%%)")
    head_lr_mult: float = opt(10.0, "the value head's learning rate as a multiple of --lr: the "
                                    "head (zero weights, bias at the mean reward) must learn the "
                                    "reward's scale, which a short CPU run cannot wait for")
    standardize: bool = opt(False, "fit the rewards' z-scores, (r - mean) / sd, and save the "
                                   "model in reward units: the head's scale and the learning "
                                   "rate then suit any reward's spread")
    rare_weight: float = opt(0.0, "weight each training rollout's loss by its reward bin's "
                                  "frequency to the power -X (the values of a reward with <= 10 "
                                  "of them, else 10 equal-width bins; mean 1, capped at 10x): a "
                                  "sparse reward's rare hits count more; 0.5 is inverse-sqrt, 0 "
                                  "off")
    consistency: float = opt(0.0, "weight of the top-k consistency term: at a few states per "
                                  "rollout, the base-probability-weighted value of the top-k "
                                  "candidate states is fitted to the state's value, so the "
                                  "candidates guidance ranks are trained on (rollouts then store "
                                  "their top-k; 0 off)")
    consistency_k: int = opt(6, "candidates per state the consistency term uses (and rollouts "
                                "store)")
    consistency_states: int = opt(8, "states per rollout the consistency term uses (seeded)")
    branches: int = opt(0, "branch points per training prompt: at each (a seeded cut in one of "
                           "its rollouts) every one of the top --branch-k candidates is "
                           "completed once and trained on as a rollout of its own, so the "
                           "values see responses that part at one token (rollouts then store "
                           "their top-k; 0 off)")
    branch_k: int = opt(6, "candidates completed per branch point")
    residual: bool = opt(False, "train the model on what the reward has not yet shown: the "
                                "value is the reward read on the text so far plus the model's "
                                "output, and TD(lambda) fits their sum (potential-based "
                                "shaping); the checkpoint adds the reward itself when it "
                                "scores, so the reward must load wherever the model does")
    residual_words: bool = opt(False, "with --residual: read the reward only on the finished "
                                      "words of the text so far (up to its last whitespace), "
                                      "so that a word's first token is not scored as a whole "
                                      "word")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    batch_size: int = opt(8, "rollouts per micro-batch")
    grad_accum: int = opt(1, "micro-batches per optimiser step")
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0: off)")
    gamma: float = opt(1.0, "TD discount")
    lam: float = opt(0.95, "TD(lambda) lambda", flag="--lambda")
    seed: int = opt(defaults.SEED, "seed of sampling, split, shuffling and initialisation")
    heldout_frac: float = opt(0.1, "fraction of prompts held out for validation")
    val_completions: int = opt(4, "completions per held-out half-response (validation targets)")
    export: str | None = opt(None, "also write the final value model alone (config, head, "
                                   "adapter: no rollouts or training state) to this directory, "
                                   "e.g. to ship it", metavar="DIR")
    save_every: int = opt(0, "also checkpoint every N optimiser steps (0: only at the end)")
    device: str = option_like(ValueLoadOptions, "device", metavar="NAME",
                              help="device to train on: cpu, cuda, cuda:1 ...")
    dtype: str | None = option_like(ValueLoadOptions, "dtype", metavar="NAME",
                                    help="backbone dtype: float32, bfloat16, float16 (default "
                                         "float32)")
    resume: bool = opt(False, "continue the run in --out: reuse its rollouts, restore the step "
                              "count and optimiser state")
    quiet: bool = opt(False, "no progress bars")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_help(cls) -> dict[str, dict]:
        return {f.name: dict(f.metadata) for f in fields(cls)}


# What defines the model and its loss: a resume with any of these changed is refused. A state
# saved before an option existed was trained at its default, except lora_layers (then: all, 0).
FIT_OPTIONS = ("backbone", "lora_r", "lora_layers", "standardize", "rare_weight", "consistency",
               "consistency_k", "consistency_states", "branches", "branch_k", "gamma", "lam",
               "residual", "residual_words")
LEGACY_FIT = {"lora_layers": 0}


def check_fit(cfg: TrainConfig, state: dict, out: Path) -> None:
    """Refuse a resume that changes what defines the model or its loss (FIT_OPTIONS): the
    restored weights and optimiser were fitted to the old one, so the result would be neither."""
    saved = {k: state.get(k, LEGACY_FIT.get(k, getattr(TrainConfig, k, None)))
             for k in FIT_OPTIONS}
    changed = [(k, saved[k], getattr(cfg, k)) for k in FIT_OPTIONS
               if saved[k] != getattr(cfg, k)]
    if changed:
        was = ", ".join(f"--{'lambda' if k == 'lam' else k.replace('_', '-')} {old!r} "
                        f"(now {new!r})" for k, old, new in changed)
        raise ConfigError(f"{out} was trained with {was}: a resume would mix two fits; resume "
                          "with the same, or use another --out")
