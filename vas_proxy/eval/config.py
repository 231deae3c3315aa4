"""What an evaluation runs: its settings (base sampling, VAS at each beta and weight setting,
Best-of-N at each N, value-pruned Best-of-N, Best-of-N over VAS samples) and the options shared
by all of them.

A setting's name says everything that defines it ("vas b=2 plain=0.25 positivity=0.75",
"bon N=16 vader"), so results from several runs in one directory (`--resume`) never mix two
different things under one name.

EvalConfig is also the `vas-proxy eval` flags (an option group: vas_proxy/options); its field
names are saved in eval.json and compared by `--resume`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import defaults
from ..errors import ConfigError
from ..options import (GuidanceOptions, UpstreamOptions, ValueLoadOptions, comma_list, option,
                       option_like)
from ..options.groups import REWARD_HELP, VALUE_HELP, parse_rewards, parse_values
from ..options.named_specs import parse_floats, parse_ints, parse_named, parse_weights

__all__ = ["EvalConfig", "Setting", "canonical_weights", "parse_weights", "weights_label"]


@dataclass(frozen=True)
class Setting:
    """One configuration: `base` (the engine at beta 0), `vas` (the engine at `beta` with
    `weights`), `bon` (Best-of-`best_of` by `bon_reward`), `pbon` (value-pruned Best-of-N: the
    value models at `weights` rank partial responses every `prune_block` tokens and keep the top
    `prune_keep`), `gbon` (Best-of-N over VAS samples at `beta`, `weights`) or `tuned` (plain
    sampling from the RL-tuned model `--tuned` names `tuned`)."""

    method: str
    beta: float = 0.0
    weights: tuple[tuple[str, float], ...] = ()
    best_of: int = 1
    bon_reward: str = ""
    prune_block: int = 0
    prune_keep: float = 0.0
    tuned: str = ""

    @property
    def name(self) -> str:
        if self.method == "base":
            return "base"
        if self.method == "tuned":
            return f"tuned {self.tuned}"
        if self.method == "bon":
            return f"bon N={self.best_of} {self.bon_reward}"
        if self.method == "pbon":
            return (f"pbon N={self.best_of} B={self.prune_block} keep={_num(self.prune_keep)} "
                    f"{weights_label(self.weights)} {self.bon_reward}")
        if self.method == "gbon":
            return (f"gbon N={self.best_of} b={_num(self.beta)} {weights_label(self.weights)} "
                    f"{self.bon_reward}")
        return f"vas b={_num(self.beta)} {weights_label(self.weights)}"

    @property
    def is_best_of(self) -> bool:
        return self.method in ("bon", "pbon", "gbon")

    @property
    def weights_dict(self) -> dict[str, float]:
        return dict(self.weights)


def weights_label(weights) -> str:
    return " ".join(f"{k}={_num(v)}" for k, v in weights) or "none"


def _num(x: float) -> str:
    return f"{x:g}"


def canonical_weights(weights: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """Sorted, zero weights dropped: the engine skips them, so they name the same guidance."""
    return tuple(sorted((k, float(v)) for k, v in weights.items() if v != 0))


def _weight_sets(items: list[str] | None) -> list[dict[str, float]] | None:
    return [parse_weights(w) for w in items] if items else None


def _upstream(group: type, name: str, **changes):
    return option_like(group, name, section="upstream", **changes)


@dataclass
class EvalConfig:
    prompts: str = option(help="prompts JSONL: \"prompt\" (raw text) or \"messages\" (chat) per "
                               "line, as for training", metavar="FILE")
    rewards: dict[str, str] = option(help=f"reward to report: {REWARD_HELP}; repeatable (the "
                                          "first one picks the Best-of-N winner)",
                                     flag="--reward", metavar="[NAME=]SPEC", repeat=True,
                                     parse=parse_rewards)
    out: str = option(help="results.jsonl, summary.csv, summary.md and the PNG plots go here",
                      metavar="DIR")
    # The flag's default is the bundled demo model; the dataclass's (no flag) is none.
    values: dict[str, str] = option(factory=dict, help=f"value model for VAS: {VALUE_HELP}; "
                                    "repeatable (default: the bundled demo model)", flag="--value",
                                    metavar="NAME=SPEC", repeat=True, parse=parse_values)
    betas: list[float] = option(factory=lambda: list(defaults.EVAL_BETAS),
                                help="guidance strengths; 0 is base sampling", flag="--beta",
                                metavar="B,B,...", parse=lambda t: parse_floats(t, "--beta"),
                                show=comma_list)
    best_of: list[int] = option(factory=lambda: list(defaults.EVAL_BEST_OF),
                                help="Best-of-N sizes, or none", metavar="N,N,...",
                                parse=lambda t: parse_ints(t, "--best-of"), show=comma_list)
    weights: list[dict[str, float]] | None = option(
        None, "one weight setting of the value models (negative pushes away); repeatable: each "
              "is run at every beta (default: all at weight 1)", metavar="NAME=W,...",
        repeat=True, parse=_weight_sets)
    bon_reward: str | None = option(None, "reward that picks the Best-of-N winner (default: the "
                                          "first --reward)", metavar="NAME")
    pruned_best_of: list[int] = option(factory=list, help="value-pruned Best-of-N sizes (the "
                                       "value models rank partial responses and keep the best), "
                                       "or none", metavar="N,N,...",
                                       parse=lambda t: parse_ints(t, "--pruned-best-of"),
                                       show=comma_list)
    prune_block: int = option(defaults.PRUNE_BLOCK, "pruned Best-of-N: tokens between prunings")
    prune_keep: float = option(defaults.PRUNE_KEEP, "pruned Best-of-N: fraction of partial "
                                                    "responses kept at each pruning")
    guided_best_of: list[int] = option(factory=list, help="Best-of-N over VAS samples (the "
                                       "hybrid) sizes, or none", metavar="N,N,...",
                                       parse=lambda t: parse_ints(t, "--guided-best-of"),
                                       show=comma_list)
    guided_beta: float | None = option(None, "the hybrid's beta (default: the largest --beta)",
                                       metavar="B")
    tuned: dict[str, str] = option(factory=dict, help="an RL-tuned model to sample beside the "
                                   "rest: NAME=DIR of `vas-proxy baseline rl` (served by the "
                                   "embedded llama-server with its adapter; KL measured with "
                                   "the weights); repeatable", flag="--tuned",
                                   metavar="NAME=DIR", repeat=True,
                                   parse=lambda items: parse_named(items, "--tuned",
                                                                   "tuned model", "NAME=DIR"))
    prices: list[str] = option(factory=lambda: list(defaults.EVAL_PRICES),
                               help="price tables the report gives costs under: flat, out4, "
                                    "out4-prefix, openai or FILE.json", metavar="NAME,...",
                               parse=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                               show=",".join)
    max_tokens: int = option(defaults.EVAL_MAX_TOKENS, "tokens per response")
    top_k: int = option_like(GuidanceOptions, "top_k")
    speculate: int | None = option_like(GuidanceOptions, "speculate",
                                 help="VAS draft tokens per upstream call: 0 one token per call, "
                                      "-1 adaptive (exact either way; fewer calls)")
    seed: int = option(defaults.SEED, "prompt i uses seed + i in every setting")
    samples: int = option(defaults.EVAL_SAMPLES, "responses per prompt and setting")
    limit: int | None = option(None, "use the first N prompts only", metavar="N")
    concurrency: int = option(defaults.CONCURRENCY, "generations in flight")
    upstream: str | None = _upstream(UpstreamOptions, "url")
    model: str | None = _upstream(UpstreamOptions, "model")
    provider: str = _upstream(UpstreamOptions, "provider")
    chat_template: str | None = _upstream(UpstreamOptions, "chat_template")
    continuation: str = _upstream(UpstreamOptions, "continuation")
    embedded: str | None = _upstream(UpstreamOptions, "embedded")
    device: str = _upstream(ValueLoadOptions, "device", help="value-model and reward device")
    dtype: str | None = _upstream(ValueLoadOptions, "dtype")
    timeout: float = _upstream(UpstreamOptions, "timeout")
    resume: bool = option(False, "add to --out: skip generations already in its results.jsonl")
    quiet: bool = option(False, "no progress bar or table", short="-q")

    def check(self) -> None:
        rules = [(bool(self.rewards), "--reward is required (at least one reward SPEC)"),
                 (self.max_tokens >= 1, "--max-tokens must be >= 1"),
                 (self.samples >= 1, "--samples must be >= 1"),
                 (self.limit is None or self.limit >= 1, "--limit must be >= 1"),
                 (self.concurrency >= 1, "--concurrency must be >= 1"),
                 (all(n >= 1 for n in self.best_of), "--best-of values must be >= 1"),
                 (all(n >= 1 for n in self.pruned_best_of + self.guided_best_of),
                  "--pruned-best-of and --guided-best-of values must be >= 1"),
                 (self.prune_block >= 1, "--prune-block must be >= 1"),
                 (0 < self.prune_keep <= 1, "--prune-keep must be in (0, 1]"),
                 (bool(self.betas or self.best_of or self.pruned_best_of
                       or self.guided_best_of or self.tuned),
                  "nothing to evaluate: give --beta, --best-of, --pruned-best-of, "
                  "--guided-best-of or --tuned"),
                 (not self.tuned or self.upstream is None,
                  "--tuned models are served by the embedded upstream: drop --upstream")]
        for ok, message in rules:
            if not ok:
                raise ConfigError(message)
        if self.bon_reward is not None and self.bon_reward not in self.rewards:
            raise ConfigError(f"--bon-reward {self.bon_reward!r} is not one of the rewards: "
                              f"{', '.join(self.rewards)}")
        if (any(b != 0 for b in self.betas) or self.pruned_best_of or self.guided_best_of) \
                and not self.values:
            raise ConfigError("VAS and pruned or guided Best-of-N settings need a value model: "
                              "pass --value")
        if self.guided_best_of and self.hybrid_beta() == 0:
            raise ConfigError("--guided-best-of needs a beta != 0: pass --guided-beta or a "
                              "--beta above 0")
        from ..prices import parse_prices

        parse_prices(",".join(self.prices))  # a bad table fails now, not at the report
        for w in self.weights or []:
            unknown = set(w) - set(self.values)
            if unknown:
                raise ConfigError(f"--weights names unknown value model(s) "
                                  f"{', '.join(sorted(unknown))}; loaded: "
                                  f"{', '.join(self.values) or 'none'}")

    def settings(self) -> list[Setting]:
        out: list[Setting] = []
        if any(b == 0 for b in self.betas):
            out.append(Setting("base"))
        weight_sets = self.weights or [{name: 1.0 for name in self.values}]
        for w in weight_sets:
            for beta in sorted(b for b in self.betas if b != 0):
                out.append(Setting("vas", beta=beta, weights=canonical_weights(w)))
        reward = self.bon_reward or next(iter(self.rewards))
        out += [Setting("bon", best_of=n, bon_reward=reward) for n in sorted(set(self.best_of))]
        first = canonical_weights(weight_sets[0])
        out += [Setting("pbon", weights=first, best_of=n, bon_reward=reward,
                        prune_block=self.prune_block, prune_keep=self.prune_keep)
                for n in sorted(set(self.pruned_best_of))]
        out += [Setting("gbon", beta=self.hybrid_beta(), weights=first, best_of=n,
                        bon_reward=reward) for n in sorted(set(self.guided_best_of))]
        out += [Setting("tuned", tuned=name) for name in self.tuned]
        return list(dict.fromkeys(out))  # same setting twice (e.g. zero weights): run it once

    def hybrid_beta(self) -> float:
        if self.guided_beta is not None:
            return self.guided_beta
        return max(self.betas, default=0.0)

    def to_dict(self) -> dict:
        return asdict(self)
