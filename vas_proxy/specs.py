"""`py:module:function` specs, shared by value models and rewards (docs/design.md §5).

Only operators name code (CLI flags, Python arguments); a request body never reaches here.
"""

from __future__ import annotations

import importlib

from .errors import VasError


def import_callable(spec: str, *, kind: str, signature: str, error: type[VasError]):
    """Resolve `py:module:function` (the attribute may be dotted: `py:pkg.mod:Class.method`)."""
    module_name, sep, attr_path = spec[len("py:"):].partition(":")
    if not sep or not module_name or not attr_path:
        raise error(f"bad {kind} spec {spec!r}: expected py:module:function")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"{kind} spec {spec!r}: cannot import module {module_name!r} ({exc}); "
                    "check the name and that it is on PYTHONPATH") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise error(f"{kind} spec {spec!r}: module {module_name!r} has no attribute "
                        f"{attr_path!r}") from None
    if not callable(obj):
        raise error(f"{kind} spec {spec!r}: {attr_path!r} is a {type(obj).__name__}, "
                    f"not a callable {signature}")
    return obj
