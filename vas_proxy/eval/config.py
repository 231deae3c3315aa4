"""What an evaluation runs: its settings (base sampling, VAS at each beta and weight setting,
Best-of-N at each N) and the options shared by all of them.

A setting's name says everything that defines it ("vas b=2 plain=0.25 positivity=0.75",
"bon N=16 vader"), so results from several runs in one directory (`--resume`) never mix two
different things under one name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import ConfigError


@dataclass(frozen=True)
class Setting:
    """One configuration: `base` (the engine at beta 0), `vas` (the engine at `beta` with
    `weights`) or `bon` (Best-of-`best_of` by `bon_reward`)."""

    method: str
    beta: float = 0.0
    weights: tuple[tuple[str, float], ...] = ()
    best_of: int = 1
    bon_reward: str = ""

    @property
    def name(self) -> str:
        if self.method == "base":
            return "base"
        if self.method == "bon":
            return f"bon N={self.best_of} {self.bon_reward}"
        return f"vas b={_num(self.beta)} {weights_label(self.weights)}"

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


def parse_floats(text: str, flag: str) -> list[float]:
    return [_parse(x, float, flag) for x in _items(text)]


def parse_ints(text: str, flag: str) -> list[int]:
    return [_parse(x, int, flag) for x in _items(text)]


def _items(text: str) -> list[str]:
    if text.strip().lower() in ("", "none"):
        return []
    return [x.strip() for x in text.split(",") if x.strip()]


def _parse(x: str, kind, flag: str):
    try:
        return kind(x)
    except ValueError:
        raise ConfigError(f"{flag}: {x!r} is not a{'n integer' if kind is int else ' number'}; "
                          f"expected a comma-separated list, e.g. {flag} 1,4,16") from None


def parse_weights(text: str) -> dict[str, float]:
    """`a=1,b=-0.5` → {"a": 1.0, "b": -0.5} (negative weights push away from a value)."""
    out: dict[str, float] = {}
    for item in _items(text):
        name, sep, w = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--weights expects NAME=W[,NAME=W...], got {item!r}")
        out[name.strip()] = _parse(w, float, "--weights")
    if not out:
        raise ConfigError("--weights needs at least one NAME=W")
    return out


@dataclass
class EvalConfig:
    prompts: str
    rewards: dict[str, str]
    out: str
    values: dict[str, str] = field(default_factory=dict)
    betas: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 4.0])
    best_of: list[int] = field(default_factory=lambda: [1, 4, 16])
    weights: list[dict[str, float]] | None = None  # None: every value model at weight 1
    bon_reward: str | None = None  # None: the first reward
    max_tokens: int = 32
    top_k: int = 20
    speculate: int = 0
    seed: int = 0
    samples: int = 1
    limit: int | None = None
    concurrency: int = 2
    upstream: str | None = None
    model: str | None = None
    provider: str = "llamacpp"
    chat_template: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    timeout: float = 120.0
    resume: bool = False
    quiet: bool = False

    def check(self) -> None:
        rules = [(bool(self.rewards), "--reward is required (at least one reward SPEC)"),
                 (self.max_tokens >= 1, "--max-tokens must be >= 1"),
                 (self.samples >= 1, "--samples must be >= 1"),
                 (self.limit is None or self.limit >= 1, "--limit must be >= 1"),
                 (self.concurrency >= 1, "--concurrency must be >= 1"),
                 (all(n >= 1 for n in self.best_of), "--best-of values must be >= 1"),
                 (bool(self.betas or self.best_of), "nothing to evaluate: give --beta or "
                                                    "--best-of")]
        for ok, message in rules:
            if not ok:
                raise ConfigError(message)
        if self.bon_reward is not None and self.bon_reward not in self.rewards:
            raise ConfigError(f"--bon-reward {self.bon_reward!r} is not one of the rewards: "
                              f"{', '.join(self.rewards)}")
        if any(b != 0 for b in self.betas) and not self.values:
            raise ConfigError("VAS settings (beta != 0) need a value model: pass --value")
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
        return list(dict.fromkeys(out))  # same setting twice (e.g. zero weights): run it once

    def to_dict(self) -> dict:
        return asdict(self)
