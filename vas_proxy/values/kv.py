"""Everything that depends on transformers' KV-cache internals, and nothing else.

The prefix-KV tree scorer (`scorer.CheckpointValue`) hands a model a cache it built itself and
reads the grown cache back, so it relies on details transformers does not promise: the
`DynamicCache.layers` list, `DynamicLayer.keys` / `.values`, `update` concatenating into a fresh
tensor (never writing into the tensors it was given), a 4D float attention mask passing through
`create_causal_mask` untouched, and the name of the cache argument. Those assumptions live
here, so a transformers upgrade that breaks them breaks one module.

Tested against transformers 4.56.2 and 5.24.0 (`SUPPORTED`, kept equal to pyproject.toml's
bound); `tests/test_kv.py` compares the cached scorer with full recomputation and fails loudly
on a version that changes any of this. `check_cache_api` runs the same assumptions once per
process on tiny tensors and raises `TransformersAPIError` naming the supported range, rather
than letting a renamed field surface as an AttributeError (or as silently wrong values).
"""

from __future__ import annotations

import contextlib
import inspect
from functools import lru_cache

import torch
from torch import nn

from ..errors import VasError

SUPPORTED = ">=4.56,<5.25"  # keep equal to the transformers bound in pyproject.toml


class TransformersAPIError(VasError):
    """The installed transformers' cache classes are not what this module was written for."""

    code = "unsupported_transformers"


def _version() -> str:
    import transformers

    return transformers.__version__


def _unsupported(detail: str) -> TransformersAPIError:
    return TransformersAPIError(
        f"transformers {_version()} is outside the range vas_proxy's value-model KV cache "
        f"supports (transformers{SUPPORTED}): {detail}; install a supported version "
        "(pip install 'transformers" + SUPPORTED + "')")


def cache_kwarg(model: nn.Module) -> str:
    """The forward argument (and output field) of the KV cache: transformers 5.x renamed
    `past_key_values` to `cache` (the old name warns, then goes)."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def make_cache(layers: list[tuple[torch.Tensor, torch.Tensor]]):
    """A DynamicCache whose layers hold the given tensors as they are (no copy).

    Built by hand because `DynamicCache(ddp_cache_data=...)` goes through `update`, which
    concatenates onto an empty tensor, i.e. copies. `DynamicLayer.update` assigns
    `torch.cat([old, new])`, a fresh tensor, so a forward never writes into these inputs: the
    stored prefix (and the cropped views of it) stay valid and unchanged.
    """
    check_cache_api()
    return _build_cache(layers)


def cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (keys, values) of every layer of a cache a forward returned."""
    try:
        return [(layer.keys, layer.values) for layer in cache.layers]
    except AttributeError as exc:
        raise _unsupported(f"the returned cache has no layers[i].keys/.values ({exc})") from exc


# What `make_cache` assigns on each layer: the fields `DynamicLayer.lazy_initialization` sets
# (4.56 sets dtype, 5.x is_initialized; the other's is unused). tests/test_kv.py checks that
# lazy_initialization sets nothing else.
LAYER_FIELDS = ("keys", "values", "device", "dtype", "is_initialized")


def _build_cache(layers):
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    for key, val in layers:
        layer = DynamicLayer()
        layer.keys, layer.values = key, val
        layer.device, layer.dtype, layer.is_initialized = key.device, key.dtype, True
        cache.layers.append(layer)
    return cache


@lru_cache(maxsize=1)
def check_cache_api() -> None:
    """Check, once per process and on tiny tensors, every assumption `make_cache` makes;
    raise `TransformersAPIError` naming the supported range when one fails."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer
    except ImportError as exc:
        raise _unsupported(f"DynamicCache/DynamicLayer cannot be imported ({exc})") from exc
    if not isinstance(getattr(DynamicCache(), "layers", None), list):
        raise _unsupported("DynamicCache has no `layers` list")
    fresh = DynamicLayer()
    missing = [name for name in ("keys", "values", "lazy_initialization", "update")
               if not hasattr(fresh, name)]
    if missing:
        raise _unsupported(f"DynamicLayer lacks {', '.join(missing)}")
    past = torch.arange(6.0).reshape(1, 1, 3, 2)
    new = torch.full((1, 1, 1, 2), -1.0)
    try:
        cache = _build_cache([(past[..., :2, :], past[..., :2, :])])
        seen = cache.get_seq_length()
        keys, values = cache.update(new, new, 0)
        grown = cache_tensors(cache)[0]
    except TransformersAPIError:
        raise
    except Exception as exc:  # any failure here means the layout changed
        raise _unsupported(f"a hand-built DynamicCache fails ({type(exc).__name__}: {exc})") \
            from exc
    want = torch.cat([past[..., :2, :], new], dim=-2)
    if seen != 2:
        raise _unsupported(f"a cache built with 2 tokens reports {seen}")
    if not (torch.equal(keys, want) and torch.equal(values, want)
            and torch.equal(grown[0], want) and torch.equal(grown[1], want)):
        raise _unsupported("DynamicLayer.update no longer appends to the given keys/values")
    if not torch.equal(past, torch.arange(6.0).reshape(1, 1, 3, 2)):
        raise _unsupported("DynamicLayer.update writes into the tensors it was given")


def tree_mask(parent: list[int], past: int, dtype: torch.dtype,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Additive (1, 1, q, past + q) mask and (1, q) position ids for a packed token trie.

    `parent[i]` is the packed index of token i's parent (always < i), or -1 for a token that
    follows the `past` cached tokens directly. Token i sees the cache, its trie ancestors and
    itself, so each root-to-node path reads exactly like its own sequence; its position is
    past + its depth. The ancestor sets come from pointer jumping: one vectorised step per trie
    level, O(q * depth), on the CPU where `parent` lives (q x q booleans), and only the additive
    float mask is built on `device`. Floats (0 / dtype min) rather than booleans: transformers'
    eager and SDPA attention both add a 4D mask as it is (`create_causal_mask` returns 4D masks
    untouched).
    """
    q = len(parent)
    up = torch.tensor(list(parent) + [q], dtype=torch.long)  # column q: "above the roots"
    up[up < 0] = q
    rows = torch.arange(q)
    seen = torch.zeros((q, q + 1), dtype=torch.bool)
    seen[rows, rows] = True
    cur = up[:q]
    while bool((cur < q).any()):
        seen[rows, cur] = True
        cur = up[cur]
    seen = seen[:, :q]
    positions = past + seen.sum(dim=1) - 1
    mask = torch.zeros((q, past + q), dtype=dtype, device=device)
    mask[:, past:].masked_fill_(~seen.to(device), torch.finfo(dtype).min)
    return mask[None, None], positions.to(device)[None]


def attention_backends(device: torch.device):
    """On CUDA, keep SDPA off cuDNN: its attention builds an execution plan per new shape, and
    every decode step has a new length (bf16 on an H200: ~100 ms a step with cuDNN, measured,
    against a few ms of GPU work). Memory-efficient attention takes our additive tree mask."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def full_attention_only(config) -> bool:
    """Whether every layer attends to the whole sequence: sliding-window (and other) layers
    keep caches that a stored prefix cannot stand in for."""
    layer_types = getattr(config, "layer_types", None) or []
    return getattr(config, "sliding_window", None) is None and \
        all(t == "full_attention" for t in layer_types)
