"""Value and reward SPEC lists as the CLI takes them (`--value NAME=SPEC`, `--reward
[NAME=]SPEC`), weight settings (`--weights a=1,b=-0.5`), number lists, and the default value
model. Light (no torch): the parser uses them at every
start, and `runtime`, `wrap` and the demo read the same defaults from here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..assets import DATA_DIR
from ..errors import ConfigError

HEURISTIC_VALUE = "py:vas_proxy.values.heuristics:positivity"


def default_value_specs() -> dict[str, str]:
    """The bundled demo value model when it is installed, else the documented heuristic."""
    if (DATA_DIR / "values" / "positivity" / "vas_value.json").is_file():
        return {"positivity": "bundled:positivity"}
    return {"positivity": HEURISTIC_VALUE}


def parse_value_specs(items: Sequence[str] | None) -> dict[str, str]:
    """`NAME=SPEC` items → {name: spec}; none → the defaults."""
    if not items:
        return default_value_specs()
    return parse_named(items, "--value", "value model")


def parse_named(items: Sequence[str] | None, flag: str, what: str,
                form: str = "NAME=SPEC") -> dict[str, str]:
    """`NAME=VALUE` items of a repeatable flag → {name: value}; each name once."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ConfigError(f"{flag} expects {form}, got {item!r}")
        if name in out:
            raise ConfigError(f"{what} name {name!r} given twice")
        out[name] = value
    return out


_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def parse_reward_specs(items: Sequence[str] | None) -> dict[str, str]:
    """`NAME=SPEC` or bare `SPEC` items → {name: spec} (a bare spec is its own name: `vader`).

    A `=` only names when what precedes it is a plain name, so `hf:dir?pair=1` stays a spec.
    """
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, spec = item.partition("=")
        if not (sep and _NAME.fullmatch(name)):
            name, spec = item, item
        if not spec:
            raise ConfigError(f"--reward expects NAME=SPEC or SPEC, got {item!r}")
        if name in out:
            raise ConfigError(f"reward name {name!r} given twice")
        out[name] = spec
    return out


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
