"""Turn a value SPEC string into a `ValueFunction` (docs/design.md §5.4).

Forms: `py:module:function` (a Python callable), `reward:REWARD_SPEC` (a reward read on the
text so far), `bundled:NAME` (a checkpoint shipped under `vas_proxy/data/values/NAME`), or a
path to a checkpoint directory; `binary:` before any of them marks the value of a 0/1 reward,
guided by its exact soft tilt (`binary.BinaryValue`). Every failure is a `ValueSpecError`
naming the spec, so the CLI can print one actionable line.
"""

from __future__ import annotations

from pathlib import Path

from ..assets import DATA_DIR
from ..errors import ValueSpecError
from ..progress import quiet_third_party
from ..rewards import RewardSpecError, load_reward
from ..specs import import_callable
from . import ValueFunction
from .callable import CallableValue, reward_value

PY_PREFIX = "py:"
REWARD_PREFIX = "reward:"
BUNDLED_PREFIX = "bundled:"
BINARY_PREFIX = "binary:"
# The forms, once: errors here and the --value flags' help (options.groups) both say them.
SPEC_FORMS = ("a checkpoint dir, bundled:NAME, reward:REWARD_SPEC (the reward read on the text "
              "so far) or py:module:function, each optionally after binary: (a 0/1 reward's "
              "value, guided by its exact soft tilt)")
FORMS = f"use {SPEC_FORMS}"


def load_value(spec: str, *, name: str | None = None, device: str = "cpu",
               dtype: str | None = None, pool=None, quiet: bool = False) -> ValueFunction:
    """Load `spec`; `name` defaults to the spec itself. device/dtype apply to checkpoints only;
    checkpoints loaded with the same `pool` (a `store.BackbonePool`) share their backbone.
    `quiet`: transformers and peft print nothing while a checkpoint loads."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueSpecError(f"empty value spec {spec!r}; {FORMS}")
    spec = spec.strip()
    if spec.startswith(BINARY_PREFIX):
        from .binary import BinaryValue

        inner = spec[len(BINARY_PREFIX):].strip()
        if not inner or inner.startswith(BINARY_PREFIX):
            raise ValueSpecError(f"value spec {spec!r}: binary: takes one inner spec; {FORMS}")
        return BinaryValue(load_value(inner, name=name or spec, device=device, dtype=dtype,
                                      pool=pool, quiet=quiet), name or spec)
    if spec.startswith(PY_PREFIX):
        return CallableValue(_import_callable(spec), name or spec)
    if spec.startswith(REWARD_PREFIX):
        return _reward_value(spec, name=name, device=device, quiet=quiet)
    path = checkpoint_dir(spec)
    with quiet_third_party(enabled=quiet):
        return _load_checkpoint(spec, path, name=name, device=device, dtype=dtype, pool=pool)


def backbone_of(spec: str) -> str | None:
    """The backbone a checkpoint SPEC is built on (cheap: reads only its config), None for
    `py:` and `reward:` specs. Value models with the same one can share it
    (`store.BackbonePool`)."""
    if not isinstance(spec, str):
        return None
    spec = spec.strip().removeprefix(BINARY_PREFIX).strip()
    if spec.startswith((PY_PREFIX, REWARD_PREFIX)) or not spec:
        return None
    from .store import backbone_identity, read_checkpoint_config

    path = checkpoint_dir(spec)
    return backbone_identity(path, read_checkpoint_config(path))


def _import_callable(spec: str):
    return import_callable(spec, kind="value", signature="f(prompt, continuations) -> list[float]",
                           error=ValueSpecError)


def _reward_value(spec: str, *, name: str | None, device: str, quiet: bool) -> ValueFunction:
    inner = spec[len(REWARD_PREFIX):].strip()
    try:
        reward = load_reward(inner, device=device, quiet=quiet)
    except RewardSpecError as exc:
        raise ValueSpecError(f"value spec {spec!r}: {exc}") from exc
    return reward_value(reward, name or spec)


def checkpoint_dir(spec: str) -> Path:
    """The directory a checkpoint SPEC (bundled:NAME or a path) names, or a clear error."""
    if spec.startswith(BUNDLED_PREFIX):
        name = spec[len(BUNDLED_PREFIX):]
        path = DATA_DIR / "values" / name
        if not name or not path.is_dir():
            shipped = sorted(p.name for p in (DATA_DIR / "values").glob("*") if p.is_dir())
            raise ValueSpecError(f"value spec {spec!r}: no bundled value model {name!r} "
                                 f"(shipped: {', '.join(shipped) or 'none'})")
        return path
    path = Path(spec).expanduser()
    if not path.exists():
        if ":" in spec.split("/")[0] and not spec.startswith(("/", ".", "~")):
            raise ValueSpecError(f"unknown value spec form {spec!r}; {FORMS}")
        raise ValueSpecError(f"value spec {spec!r}: no such checkpoint directory; {FORMS}")
    if not path.is_dir():
        raise ValueSpecError(f"value spec {spec!r} is a file, not a checkpoint directory; {FORMS}")
    return path


def _load_checkpoint(spec: str, path: Path, *, name: str | None, device: str,
                     dtype: str | None, pool=None) -> ValueFunction:
    # Imported here: torch/transformers cost seconds and `py:` specs need neither.
    from .scorer import CheckpointValue

    return CheckpointValue.load(path, name=name or spec, device=device, dtype=dtype, pool=pool)
