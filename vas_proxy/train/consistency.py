"""The top-k consistency term (`--consistency W`): train the values of the candidates guidance
ranks, not only of the states the sampled responses pass through (docs/design.md §1.11).

Guidance scores V(s·a) for each of the top-k candidates a of a state s; TD(λ) on rollouts
trains only the sampled one. Under the base policy V(s) = E_{a~p(·|s)} V(s·a), so at a few
seeded states per rollout this fits Σ_a p̃(a|s) V(s·a) to V(s) (detached; p̃ the upstream's
top-k probabilities renormalised): when a sampled continuation proves better than V(s)
expected, its unsampled rivals must on average be worse. The candidate states are the very
strings the engine scores (prompt + response prefix + candidate, through `encode`), packed as
extra tokens after the rollout's own that see only their prefix (`kv.tree_mask`, as the scorer
packs candidates), so one forward serves both losses.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..values.kv import tree_mask
from ..values.model import encode_batch
from ..values.scorer import common_prefix_len
from .rollouts import Rollout
from .td import Batch, Example, collate


def add_states(tokenizer, examples: list[Example], rollouts: list[Rollout], *, k: int,
               states: int, seed: int) -> list[Example]:
    """Each example with up to `states` candidate states of its rollout (those with stored
    top-k and at least 2 candidates; none for a rollout without, e.g. an eval's responses)."""
    return [_with_states(tokenizer, e, r, k=k, count=states, seed=seed)
            for e, r in zip(examples, rollouts, strict=True)]


def _with_states(tokenizer, e: Example, r: Rollout, *, k: int, count: int,
                 seed: int) -> Example:
    valid = r.cut_points(k)
    if not valid:
        return e
    rng = np.random.default_rng([seed, r.seed, 11])
    picked = sorted(rng.choice(len(valid), size=min(count, len(valid)), replace=False))
    chain = e.ids
    extra: list[int] = []
    parent: list[int] = []
    found = []
    for i in picked:
        t, prefix = valid[i]
        cands = r.top[t][:k]
        state_text = r.upstream_prompt + prefix
        seqs = encode_batch(tokenizer, [state_text] + [state_text + c for c, _ in cands])
        nodes = [_attach(seq, chain, extra, parent) for seq in seqs]
        logp = np.array([lp for _, lp in cands], dtype=float)
        probs = np.exp(logp - logp.max())
        found.append((nodes[0], nodes[1:], (probs / probs.sum()).tolist()))
    return dataclasses.replace(e, extra=extra, extra_parent=parent, states=found)


def _attach(seq: list[int], chain: list[int], extra: list[int], parent: list[int]) -> int:
    """The row index whose value is V(seq): a chain position when `seq` is a prefix of the
    rollout's tokens, else new extra tokens after their longest shared prefix (a root, parent
    -1, when they share nothing: `tree_mask` then starts it at position 0)."""
    n = common_prefix_len([seq, chain])
    if n == len(seq):
        return n - 1
    node = n - 1
    for token in seq[n:]:
        extra.append(token)
        parent.append(node)
        node = len(chain) + len(extra) - 1
    return node


@dataclasses.dataclass
class TreeBatch:
    """A micro-batch with candidate tokens packed after each rollout: the TD batch (its masks
    cover the rollout tokens only), the 4D additive attention mask and position ids of the
    packed rows, and the consistency term's flat indices into (B·W) values."""

    batch: Batch
    mask: torch.Tensor  # (B, 1, W, W)
    positions: torch.Tensor  # (B, W)
    state_index: torch.Tensor  # (S,)
    cand_index: torch.Tensor  # (S, K), padded with 0 where prob is 0
    probs: torch.Tensor  # (S, K)
    state_weight: torch.Tensor  # (S,) the row's loss weight

    def to(self, device) -> TreeBatch:
        return TreeBatch(self.batch.to(device), *(t.to(device) for t in (
            self.mask, self.positions, self.state_index, self.cand_index, self.probs,
            self.state_weight)))


def collate_tree(examples: list[Example], pad_id: int, dtype: torch.dtype) -> TreeBatch:
    base = collate(examples, pad_id)
    width = max(len(e.ids) + len(e.extra) for e in examples)
    rows = len(examples)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    masks, positions = [], []
    state_index, cand_index, probs, weight = [], [], [], []
    k = max((len(c) for e in examples for _, c, _ in e.states), default=1)
    for row, e in enumerate(examples):
        tokens = e.ids + e.extra
        input_ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        parent = list(range(-1, len(e.ids) - 1)) + e.extra_parent
        parent += [-1] * (width - len(parent))  # padding sees only itself
        mask, pos = tree_mask(parent, 0, dtype)
        masks.append(mask[0])
        positions.append(pos[0])
        for node, cands, p in e.states:
            state_index.append(row * width + node)
            cand_index.append([row * width + c for c in cands] + [0] * (k - len(cands)))
            probs.append(list(p) + [0.0] * (k - len(p)))
            weight.append(e.weight)

    def pad(tensor: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((rows, width), dtype=tensor.dtype)
        out[:, :tensor.shape[1]] = tensor
        return out

    batch = Batch(input_ids, pad(base.attention_mask), pad(base.response_mask),
                  pad(base.rewards), base.weights, pad(base.potentials))
    return TreeBatch(batch, torch.stack(masks), torch.stack(positions),
                     torch.tensor(state_index, dtype=torch.long).reshape(-1),
                     torch.tensor(cand_index, dtype=torch.long).reshape(-1, k),
                     torch.tensor(probs, dtype=torch.float32).reshape(-1, k),
                     torch.tensor(weight, dtype=torch.float32))


def consistency_loss(values: torch.Tensor, tb: TreeBatch) -> torch.Tensor:
    """0.5 · weighted mean over states of (Σ_a p̃_a V(s·a) − V(s))², V(s) detached."""
    if tb.state_index.numel() == 0:
        return values.sum() * 0.0
    flat = values.reshape(-1)
    mixed = (tb.probs * flat[tb.cand_index]).sum(dim=1)
    err = (mixed - flat.detach()[tb.state_index]) ** 2
    return 0.5 * (err * tb.state_weight).sum() / tb.state_weight.sum().clamp(min=1e-12)
