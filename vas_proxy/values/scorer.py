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
    tokens. Each call: tokenise prompt + response + candidate for every candidate; the longest
    common prefix P (capped so that each candidate keeps ≥ 1 own token) is served from a stored
    batch-1 cache, cropped where the previous prefix diverges (a shrinking response or a
    re-tokenised boundary); the prefix tokens it lacks and the candidates' remaining tokens then
    run in ONE forward, packed into a single row as a token trie (each token sees the cache and
    its trie ancestors, `kv.tree_mask`), and the grown prefix is kept for the next call: a
    decode step costs one forward over about 1 + k tokens. The trie is what makes a speculative
    chunk cheap: its L x k strings `D_i + c` (D_i the drafts before position i) repeat the
    drafts, which are then computed once, not once per candidate. Packing, rather than a batch
    of rows over an expanded cache, avoids `DynamicLayer.update` concatenating a copy of the
    prefix per row in every layer (that copy dominated the step at 1024 tokens) and needs no
    padding. A few prefixes are kept (LRU) so interleaved requests do not evict each other.

    `use_cache=False` recomputes the k full sequences in one padded batch (the reference path
    for tests and benchmarks); it is forced for backbones with sliding-window or other
    non-full-attention layers, whose caches do not fit this scheme.
    """

    # The engine scores a chunk's drafted positions in one call on every device. On an
    # accelerator a forward costs about the same for 1 or L positions; on this 2-core CPU one
    # forward over L positions also beat L forwards, despite the positions wasted after a
    # rejected draft: 0.243 vs 0.263 s/token on llama-cpp-python, ~0.105 vs ~0.155 on
    # llama-server (benchmarks/bench_latency.py; docs/design.md §3.5).
    batches_positions = True

    def __init__(self, model: ValueModel, tokenizer, name: str = "value", *,
                 use_cache: bool = True, max_prefixes: int = 4):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.use_cache = use_cache and full_attention_only(model.base_config)
        self.max_prefixes = max_prefixes
        self.config: dict[str, Any] = {}
        self.scale = 1.0  # see `store.reward_scale`; a checkpoint loaded from disk sets it
        self.potential = None  # `train --residual`: the reward added to the model's output
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
        value.potential = load_potential(path, config, device)
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
        values = values.tolist()
        if self.potential is not None:  # `--residual`: phi of each continuation, then scale
            phi = self.potential([prompt] * len(candidates), [response + c for c in candidates])
            values = [v + p for v, p in zip(values, phi)]
        return [float(v) * self.scale for v in values]

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
        """One forward over a token trie: the prefix tokens missing from the best stored cache,
        then every candidate's remaining tokens, shared ones once (see `_pack_trie`)."""
        n = min(common_prefix_len(ids), min(len(s) for s in ids) - 1)
        prefix = ids[0][:n]
        slot, shared = self._best_slot(prefix)
        past = [(key[..., :shared, :], val[..., :shared, :]) for key, val in slot.layers]
        tokens, parent, ends = _pack_trie(prefix[shared:], [s[n:] for s in ids])
        device = self.model.device
        mask, positions = tree_mask(parent, shared, self.model.backbone_dtype, device)
        values, cache = self.model(
            torch.tensor([tokens], device=device), past_key_values=make_cache(past),
            use_cache=True, attention_mask=mask, position_ids=positions)
        if n:
            self._store(slot, shared, _PrefixSlot(prefix, [
                (keys[..., :n, :], vals[..., :n, :]) for keys, vals in cache_tensors(cache)]))
        return values[0, torch.tensor(ends, device=device)]

    def _best_slot(self, prefix: list[int]) -> tuple[_PrefixSlot, int]:
        best, best_len = _PrefixSlot(), 0
        for slot in self._slots:
            shared = common_prefix_len([slot.ids, prefix])
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


def load_potential(path, config: dict[str, Any], device: str = "cpu"):
    """The reward a `--residual` checkpoint adds to its output, read as `metadata.residual_words`
    says (None for other checkpoints: such a model alone predicts only what that reward has not
    yet shown); one that cannot load is a `ValueSpecError` naming the checkpoint."""
    meta = config.get("metadata") or {}
    spec = meta.get("residual")
    if not (isinstance(spec, str) and spec):
        return None
    from ..errors import ValueSpecError
    from ..rewards import RewardSpecError, load_reward

    from .callable import potential

    try:
        reward = load_reward(spec, device=device, quiet=True)
    except RewardSpecError as exc:
        raise ValueSpecError(f"value model {path} was trained with --residual on reward "
                             f"{spec!r}, which does not load here: {exc}") from exc
    return potential(reward, bool(meta.get("residual_words")))


def _pack_trie(chain: list[int], suffixes: list[list[int]]
               ) -> tuple[list[int], list[int], list[int]]:
    """Merge the token sequences `chain + suffix` into a trie, packed in creation order (a
    parent before its children; `chain` first, so its nodes are the first len(chain)).

    Returns the packed tokens, each one's parent (-1: follows the cache) and each sequence's
    last node. Sequences that start alike (a speculative chunk's drafts, which all of a later
    position's candidates repeat, or two tokenisations sharing a head) compute those tokens
    once; duplicates share their last node.
    """
    tokens, parent = list(chain), list(range(-1, len(chain) - 1))
    top = len(chain) - 1
    child: dict[tuple[int, int], int] = {}
    ends = []
    for suffix in suffixes:
        node = top
        for token in suffix:
            nxt = child.get((node, token))
            if nxt is None:
                nxt = child[node, token] = len(tokens)
                tokens.append(token)
                parent.append(node)
            node = nxt
        ends.append(node)
    return tokens, parent, ends


def common_prefix_len(seqs: list[list[int]]) -> int:
    """The lexicographic extremes share exactly the prefix all share (compared in C)."""
    lo, hi = min(seqs), max(seqs)
    n = 0
    for a, b in zip(lo, hi):
        if a != b:
            break
        n += 1
    return n
