"""Per-request guidance (the body's `vas` field, the CLI's guidance flags, `wrap`'s arguments)
and the one set of rules every caller validates it by: `Guidance.validate` for the CLI, `wrap`
and the eval, and the service's `vas` schema, which calls `check_guidance` field by field, so
the wire and the flags cannot disagree (docs/design.md §5).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from .defaults import BETA, MAX_BETA, MAX_SPECULATE, SPECULATE, TOP_K
from .errors import ConfigError


def _finite(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and bool(np.isfinite(v))


def _integer(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, int)


# What each guidance field accepts, in the order they are checked (the first failure is the one
# reported). The one set of rules for every caller: `Guidance.validate` (CLI flags, `wrap`, the
# eval) and the service's `vas` schema, which calls `check_guidance` field by field.
GUIDANCE_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "beta": (lambda v: _finite(v) and abs(v) <= MAX_BETA,
             f"must be a finite number with |beta| <= {MAX_BETA:g}"),
    "top_k": (lambda v: _integer(v) and v >= 1, "must be an integer >= 1"),
    "speculate": (lambda v: v is None or (_integer(v) and -1 <= v <= MAX_SPECULATE),
                  f"must be an integer: 0 (one token per call), 1..{MAX_SPECULATE} (drafted "
                  "tokens per call) or -1 (adaptive); null: the server's default"),
    "trace": (lambda v: isinstance(v, bool), "must be true or false"),
    "weights": (lambda v: v is None or (isinstance(v, Mapping)
                                        and all(_finite(x) for x in v.values())),
                "must map value-model names to finite numbers"),
}


def check_guidance(name: str, value) -> None:
    """Raise the ConfigError (param `vas.<name>`) when `value` breaks guidance field `name`'s
    rule. Named `vas.*` everywhere: that is how users know these options (docs/design.md §5)."""
    ok, must = GUIDANCE_RULES[name]
    if not ok(value):
        raise ConfigError(f"vas.{name} {must}", param=f"vas.{name}")


def check_known(fields, also: Iterable[str] = ()) -> None:
    """Raise when `fields` names something that is neither a guidance field nor in `also` (the
    service passes its Best-of-N fields, which the engine knows nothing of)."""
    also = tuple(also)
    unknown = set(fields) - set(GUIDANCE_RULES) - set(also)
    if unknown:
        raise ConfigError(f"unknown `vas` field(s): {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sorted({*GUIDANCE_RULES, *also}))}",
                          param="vas")


@dataclass
class Guidance:
    """Per-request guidance: the body's `vas` field (docs/design.md §5), server defaults
    otherwise."""

    beta: float = BETA
    top_k: int = TOP_K
    weights: dict[str, float] | None = None
    speculate: int | None = SPECULATE  # None: the engine's default (its profile's)
    trace: bool = False

    def merged(self, override: Mapping | None) -> "Guidance":
        """These defaults overridden by `override` ({guidance field: value}), validated."""
        if not override:
            return Guidance(**asdict(self))
        if not isinstance(override, Mapping):
            raise ConfigError("`vas` must be an object", param="vas")
        check_known(override)
        out = Guidance(**{**asdict(self), **override})
        out.validate()
        return out

    def validate(self) -> None:
        for name in GUIDANCE_RULES:
            check_guidance(name, getattr(self, name))
