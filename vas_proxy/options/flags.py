"""Dataclass fields → argparse flags → dataclasses: the one generator behind every subcommand.

A field says all a flag needs in its `field(metadata=...)`, written by `option()`: help,
metavar, flag name, choices, whether it repeats, how its text becomes the field's value. The
flag's type comes from the annotation, its default from the field's default (itself from
`vas_proxy.defaults`), so `--help`, the parser and the dataclass cannot disagree.

Own code rather than transformers' HfArgumentParser: importing transformers would cost seconds
at every CLI start.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

_MISSING = dataclasses.MISSING
_SCALARS = (int, float, str)
_KEYS = ("help", "flag", "short", "metavar", "choices", "required", "repeat", "positional",
         "parse", "show", "section", "secret")


def option(default: Any = _MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
           flag: str | None = None, short: str | None = None, metavar: str | None = None,
           choices: Sequence[str] | None = None, required: bool = False, repeat: bool = False,
           positional: bool = False, parse: Callable[[Any], Any] | None = None,
           show: Callable[[Any], str] | None = None, section: str | None = None,
           secret: bool = False):
    """A dataclass field that is also a flag.

    `help` is an argparse help string (write `%%` for `%`); " (default: X)" is appended unless
    the field has no default, is a switch, or the help already says "(default".
    `flag` replaces `--field-name` (`--lambda`, `--no-cache`), `short` adds an alias (`-q`).
    A bool field is a switch: store_true when it defaults to False, store_false when True.
    `list[X]` fields, and `repeat=True` ones, take the flag once per item (`action="append"`).
    `parse` turns what argparse read (text, a list of texts, or None when the flag is absent)
    into the field's value, and is then called even for an absent flag; argparse sees text.
    `show` writes the default as the flag's text (`[1, 4]` → `1,4`); `section` overrides the
    group's heading in `--help`. No default (or `required=True`): the flag is required.
    `secret` keeps the value out of the dataclass's repr (API keys).
    """
    if not help:
        raise TypeError("option() needs a help text")
    meta = {"help": help, "flag": flag, "short": short, "metavar": metavar,
            "choices": list(choices) if choices else None, "required": required,
            "repeat": repeat, "positional": positional, "parse": parse, "show": show,
            "section": section, "secret": secret}
    meta = {k: v for k, v in meta.items() if v is not None and v is not False}  # unset
    extra = {"metadata": meta, "repr": not secret}
    if factory is not None:
        return dataclasses.field(default_factory=factory, **extra)
    if default is _MISSING:
        return dataclasses.field(**extra)
    return dataclasses.field(default=default, **extra)


def option_like(group: type, name: str, **changes: Any):
    """A copy of `group`'s option `name` (same default and metadata) with `changes`: configs
    saved flat (TrainConfig, EvalConfig) reuse the upstream options without a second default."""
    f = group.__dataclass_fields__[name]
    meta = {**f.metadata, **{k: v for k, v in changes.items() if k in _KEYS}}
    extra = set(changes) - set(_KEYS) - {"default", "factory"}
    if extra:
        raise TypeError(f"option_like: unknown option(s) {', '.join(sorted(extra))}")
    if "default" in changes or "factory" in changes:
        default, factory = changes.get("default", _MISSING), changes.get("factory")
    elif f.default_factory is not _MISSING:
        default, factory = _MISSING, f.default_factory
    else:
        default, factory = f.default, None
    return option(default, factory=factory, **meta)


def dest(group: type, name: str) -> str:
    """Where a field's flag lands in the namespace: per group, so two groups of one parser may
    both have an `api_key` (serve: the proxy's and the upstream's)."""
    return f"{group.__name__}.{name}"


def add_options(parser: argparse.ArgumentParser, group: type, *,
                only: Iterable[str] | None = None, flags: Mapping[str, str] | None = None,
                title: str | None = None) -> None:
    """Add the flags of dataclass `group` (its fields in `only`, all by default) to `parser`.

    `flags` renames a field's flag for this parser (serve's upstream key is
    `--upstream-api-key`); the heading is `title`, else `group.TITLE`, else none.
    """
    hints = typing.get_type_hints(group)
    wanted = set(only) if only is not None else None
    for f in dataclasses.fields(group):
        if wanted is not None and f.name not in wanted:
            continue
        meta = dict(f.metadata)
        if "help" not in meta:
            raise TypeError(f"{group.__name__}.{f.name} is not an option() field")
        heading = meta.get("section") or title or getattr(group, "TITLE", None)
        target = _section(parser, heading)
        names, kwargs = _argument(group, f, hints[f.name], meta, (flags or {}).get(f.name))
        target.add_argument(*names, **kwargs)


def from_args(group: type, namespace: argparse.Namespace):
    """The dataclass `group` from a namespace its flags were parsed into; fields whose flags this
    parser lacks (`add_options(only=...)`) keep their defaults."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(group):
        key = dest(group, f.name)
        if not hasattr(namespace, key):
            continue
        raw = getattr(namespace, key)
        parse = f.metadata.get("parse")
        if parse is not None:
            kwargs[f.name] = parse(raw)
        elif raw is not None or not _has_default(f):
            kwargs[f.name] = raw
    return group(**kwargs)


def comma_list(values: Iterable[float]) -> str:
    """`[0.0, 0.5, 4]` → `0,0.5,4`: the text of a comma-separated default."""
    return ",".join(f"{v:g}" for v in values)


def _argument(group: type, f: dataclasses.Field, hint: Any, meta: dict,
              renamed: str | None) -> tuple[list[str], dict]:
    where = f"{group.__name__}.{f.name}"
    parse = meta.get("parse")
    base, origin = _unwrap(hint)
    kwargs: dict[str, Any] = {"help": meta["help"]}
    required = meta.get("required", False) or not _has_default(f)

    if meta.get("positional"):
        kwargs.update(metavar=meta.get("metavar", f.name))
        if not required:
            kwargs.update(nargs="?", default=_default(f))
        return [dest(group, f.name)], kwargs

    names = [renamed or meta.get("flag") or "--" + f.name.replace("_", "-")]
    if meta.get("short"):
        names.append(meta["short"])
    kwargs["dest"] = dest(group, f.name)
    if base is bool and parse is None:
        default = _default(f)
        if default not in (True, False):
            raise TypeError(f"{where}: a switch needs a False or True default")
        kwargs["action"] = "store_false" if default else "store_true"
        return names, kwargs

    if parse is not None:
        kind, repeat = str, meta.get("repeat", False)
    elif origin is list or meta.get("repeat"):
        kind, repeat = (typing.get_args(base) or (str,))[0], True
    else:
        kind, repeat = base, False
    if kind not in _SCALARS:
        raise TypeError(f"{where}: no flag for {hint!r}; give option(parse=...)")
    kwargs["type"] = kind
    if meta.get("choices"):
        kwargs["choices"] = meta["choices"]  # --help lists them unless a metavar is given
    if meta.get("metavar") or not meta.get("choices"):
        kwargs["metavar"] = meta.get("metavar", f.name.upper())
    if repeat:
        kwargs["action"] = "append"  # its default must be None: argparse appends to a default
    if required:
        kwargs["required"] = True
    elif not repeat:  # (a repeated flag's default is computed by the dataclass, not here)
        default = _default(f)
        if parse is not None and not (default is None or isinstance(default, str)
                                      or meta.get("show")):
            raise TypeError(f"{where}: give option(show=...) to write its default as text")
        kwargs["default"] = meta["show"](default) if meta.get("show") else default
        if kwargs["default"] is not None and "(default" not in kwargs["help"]:
            kwargs["help"] += " (default: %(default)s)"
    return names, kwargs


def _section(parser: argparse.ArgumentParser, title: str | None):
    if title is None:
        return parser
    for g in parser._action_groups:  # one heading per title, whichever group added it first
        if g.title == title:
            return g
    return parser.add_argument_group(title)


def _unwrap(hint: Any) -> tuple[Any, Any]:
    """`X | None` → X; returns (type, its origin: list, dict or None)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else str
    return hint, typing.get_origin(hint)


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not _MISSING or f.default_factory is not _MISSING


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return None if f.default is _MISSING else f.default
