"""What an RL baseline learns from: preference pairs from `train`'s black-box rollouts (DPO), or
the training prompts and a reward function (online RL), on one reward or a fixed mixture.

A mixture weighs each reward in units of its own spread over the rollouts (Σ wᵢ·rᵢ/sdᵢ), the
units VAS's `beta` and value weights use, so an RL run on `vader=0.5,plain=0.5` is the fixed
counterpart of VAS at those weights.

Pairs are the best against the worst response of each prompt (ties skipped: no preference),
tokenized here rather than by TRL: the response keeps the exact prompt the upstream saw, and the
end-of-turn token is appended only where the model really stopped (a response cut at
`max_tokens` did not end, and teaching it to end there would teach short answers).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..train.rollouts import ROLLOUTS_FILE, JsonlStore, Rollout


@dataclass(frozen=True)
class Mixture:
    """Rewards {name: spec} and their weights; `scale` is each reward's sd over the data."""

    specs: dict[str, str]
    weights: dict[str, float]
    scale: dict[str, float]

    def combine(self, scores: dict[str, list[float]]) -> np.ndarray:
        return sum(self.weights[n] * np.asarray(scores[n], dtype=float) / self.scale[n]
                   for n in self.specs)

    def describe(self) -> dict:
        return {"rewards": self.specs, "weights": self.weights, "sd": self.scale}


def read_rollouts(run_dir: str | Path) -> list[Rollout]:
    path = Path(run_dir) / ROLLOUTS_FILE
    if not path.is_file():
        raise ConfigError(f"--rollouts {run_dir}: no {ROLLOUTS_FILE} there; sample one with "
                          "`vas-proxy train ... --epochs 0 --out DIR`")
    rollouts = sorted(JsonlStore(path, Rollout).load().values(), key=lambda r: r.key)
    if not rollouts:
        raise ConfigError(f"{path} holds no rollouts")
    return rollouts


def score_rollouts(rollouts: list[Rollout], rewards: dict, specs: dict[str, str]
                   ) -> dict[str, list[float]]:
    """Each reward's scores: the stored ones where `train` scored with the same spec."""
    out = {}
    for name, spec in specs.items():
        if all(spec in r.rewards for r in rollouts):
            out[name] = [r.rewards[spec] for r in rollouts]
        else:
            out[name] = list(rewards[name]([r.prompt for r in rollouts],
                                           [r.response for r in rollouts]))
    return out


def mixture(specs: dict[str, str], weights: dict[str, float] | None,
            scores: dict[str, list[float]]) -> Mixture:
    weights = weights or {n: 1.0 for n in specs}
    unknown = set(weights) - set(specs)
    if unknown:
        raise ConfigError(f"--weights names unknown reward(s) {', '.join(sorted(unknown))}; "
                          f"given: {', '.join(specs)}")
    scale = {}
    for n in specs:
        sd = float(np.std(scores[n]))
        scale[n] = sd if sd > 1e-8 else 1.0  # a constant reward: nothing to scale
    return Mixture(dict(specs), {n: float(weights.get(n, 0.0)) for n in specs}, scale)


def preference_pairs(rollouts: list[Rollout], combined: np.ndarray) -> list[dict]:
    """Best against worst response per prompt; prompts whose responses all tie are skipped."""
    by_prompt: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(rollouts):
        by_prompt[r.prompt_index].append(i)
    pairs = []
    for p, idx in sorted(by_prompt.items()):
        if len(idx) < 2:
            continue
        best = max(idx, key=lambda i: (combined[i], -i))
        worst = min(idx, key=lambda i: (combined[i], i))
        if combined[best] <= combined[worst]:
            continue
        a, b = rollouts[best], rollouts[worst]
        pairs.append({"prompt_index": p, "prompt": a.upstream_prompt,
                      "chosen": a.response, "rejected": b.response,
                      "chosen_stop": a.finish_reason == "stop",
                      "rejected_stop": b.finish_reason == "stop",
                      "margin": float(combined[best] - combined[worst])})
    if not pairs:
        raise ConfigError("no preference pairs: every prompt's responses tie on the reward "
                          "(or each prompt has one response); sample more per prompt")
    return pairs


def tokenize_pair(tokenizer, pair: dict) -> dict:
    """TRL's DPO columns: prompt ids as the upstream saw them, each response's ids after them,
    end-of-turn appended only to a response that stopped."""
    prompt = tokenizer(pair["prompt"], add_special_tokens=False)["input_ids"]
    out = {"prompt_ids": prompt}
    for key in ("chosen", "rejected"):
        ids = tokenizer(pair[key], add_special_tokens=False)["input_ids"]
        out[f"{key}_ids"] = ids + ([tokenizer.eos_token_id] if pair[f"{key}_stop"] else [])
    return out
