"""`CheckpointValue`: a trained value model as a `ValueFunction`, scoring with prefix-KV reuse.

The transformers cache plumbing it needs (building a cache from stored tensors, the tree mask,
the attention backends) is in `kv`; measured costs are in docs/design.md §4.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .kv import attention_backends, cache_tensors, full_attention_only, make_cache, tree_mask
from .model import ValueModel, encode_batch
from .store import BackbonePool, load_value_model, reward_scale
from .threads import configure_cpu_threads


@dataclass
class _PrefixSlot:
    """A batch-1 KV cache holding exactly the keys/values of `ids`."""

    ids: list[int] = field(default_factory=list)
    layers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


class CheckpointValue:
    """`ValueFunction` over a `ValueModel`, reusing the KV cache of the shared token prefix.

    Decoding grows the state one token per step, so consecutive calls share almost all their
    tokens. Each call: tokenise prompt + response + candidate for the k candidates; the longest
    common prefix P (capped so that each candidate keeps ≥ 1 own token) is served from a stored
    batch-1 cache, cropped where the previous prefix diverges (a shrinking response or a
    re-tokenised boundary); the prefix tokens it lacks and the k suffixes then run in ONE
    forward, packed into a single row with a tree attention mask (each suffix token sees the
    prefix and its own candidate's earlier tokens), and the grown prefix is kept for the next
    call: a decode step costs one forward over about 1 + k tokens. Packing, rather than a batch
    of k rows over an expanded cache, avoids `DynamicLayer.update` concatenating k copies of the
    prefix in every layer (that copy dominated the step at 1024 tokens) and needs no padding. A
    few prefixes are kept (LRU) so interleaved requests do not evict each other.

    `use_cache=False` recomputes the k full sequences in one padded batch (the reference path
    for tests and benchmarks); it is forced for backbones with sliding-window or other
    non-full-attention layers, whose caches do not fit this scheme.
    """

    def __init__(self, model: ValueModel, tokenizer, name: str = "value", *,
                 use_cache: bool = True, max_prefixes: int = 4):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.use_cache = use_cache and full_attention_only(model.base_config)
        self.max_prefixes = max_prefixes
        self.config: dict[str, Any] = {}
        self.scale = 1.0  # see `store.reward_scale`; a checkpoint loaded from disk sets it
        self._slots: list[_PrefixSlot] = []
        self._lock = threading.Lock()
        pad = tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        if self.model.device.type == "cpu":
            configure_cpu_threads()

    @classmethod
    def load(cls, path: str | Path, *, name: str | None = None, device: str = "cpu",
             dtype: str | torch.dtype | None = None, use_cache: bool = True,
             pool: BackbonePool | None = None) -> CheckpointValue:
        model, tokenizer, config = load_value_model(path, device=device, dtype=dtype, pool=pool)
        value = cls(model, tokenizer, name or str(path), use_cache=use_cache)
        value.config = config
        value.scale = reward_scale(config)
        return value

    def __repr__(self) -> str:
        return f"CheckpointValue({self.name!r})"

    def reset(self) -> None:
        """Drop the stored prefix caches."""
        with self._lock:
            self._slots.clear()

    def score(self, prompt: str, response: str, candidates: list[str]) -> list[float]:
        if not candidates:
            return []
        ids = encode_batch(self.tokenizer, [prompt + response + c for c in candidates])
        with self._lock, torch.inference_mode(), attention_backends(self.model.device):
            values = self._score_cached(ids) if self.use_cache else self._score_full(ids)
        return [float(v) * self.scale for v in values.tolist()]

    # -- full recompute --------------------------------------------------------------------

    def _score_full(self, ids: list[list[int]]) -> torch.Tensor:
        input_ids, mask, last = self._right_pad(ids)
        values, _ = self.model(input_ids, attention_mask=mask)
        return values[torch.arange(len(ids), device=last.device), last]

    def _right_pad(self, seqs: list[list[int]]):
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        last = torch.tensor([len(s) - 1 for s in seqs], dtype=torch.long)
        device = self.model.device
        return input_ids.to(device), mask.to(device), last.to(device)

    # -- prefix-cache path -----------------------------------------------------------------

    def _score_cached(self, ids: list[list[int]]) -> torch.Tensor:
        """One forward: the prefix tokens missing from the best stored cache, then the k
        candidate suffixes, all packed in one row (see `kv.tree_mask`)."""
        n = min(_common_prefix_len(ids), min(len(s) for s in ids) - 1)
        prefix, suffixes = ids[0][:n], [s[n:] for s in ids]
        slot, shared = self._best_slot(prefix)
        past = [(key[..., :shared, :], val[..., :shared, :]) for key, val in slot.layers]
        new = prefix[shared:]
        device = self.model.device
        tokens = torch.tensor(new + [t for s in suffixes for t in s], device=device)
        owner = torch.tensor([-1] * len(new) + [c for c, s in enumerate(suffixes) for _ in s],
                             device=device)
        positions = torch.cat([torch.arange(shared, n, device=device)]
                              + [torch.arange(n, n + len(s), device=device) for s in suffixes])
        values, cache = self.model(
            tokens.unsqueeze(0), past_key_values=make_cache(past), use_cache=True,
            attention_mask=tree_mask(owner, positions, shared, self.model.backbone_dtype),
            position_ids=positions.unsqueeze(0))
        if n:
            self._store(slot, shared, _PrefixSlot(prefix, [
                (keys[..., :n, :], vals[..., :n, :]) for keys, vals in cache_tensors(cache)]))
        lengths = torch.tensor([len(s) for s in suffixes], device=device)
        return values[0, len(new) + torch.cumsum(lengths, 0) - 1]

    def _best_slot(self, prefix: list[int]) -> tuple[_PrefixSlot, int]:
        best, best_len = _PrefixSlot(), 0
        for slot in self._slots:
            shared = _common_prefix_len([slot.ids, prefix])
            if shared > best_len:
                best, best_len = slot, shared
        return best, best_len

    def _store(self, old: _PrefixSlot, shared: int, new: _PrefixSlot) -> None:
        """Replace `old` when `new` continues it (same stream, maybe a re-tokenised tail), else
        add `new` as its own slot; least recently used slots go first. Slots share memory: a
        cropped cache is a view, and only the appended tokens are new tensors."""
        if old in self._slots and len(old.ids) - shared <= 16:
            self._slots.remove(old)
        self._slots.append(new)
        del self._slots[:-self.max_prefixes]


def _common_prefix_len(seqs: list[list[int]]) -> int:
    n = 0
    for column in zip(*seqs):
        if any(t != column[0] for t in column):
            break
        n += 1
    return n
