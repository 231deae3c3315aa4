"""TD(lambda) for value models: the pure math and the batches it runs on (docs/design.md §1).

As in the official VAS code: gamma = 1, lambda = 0.95, the reward sits on the last response
token, targets are lambda-returns of the OLD values (GAE advantages + old values, no gradient
through them), and the loss is 0.5 * MSE over response tokens only.

One convention differs from that code, on purpose: the value at position t is V of the state
AFTER token t (what the engine queries: V(prompt + response + candidate)), so the response
positions run from the first token holding response text to the last response token, whose
state is the whole response and whose target is the reward itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

from ..values.model import encode


def lambda_returns(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor,
                   gamma: float = 1.0, lam: float = 0.95) -> torch.Tensor:
    """Lambda-returns (B, T) of padded trajectories; 0 where `mask` is 0.

    A trajectory is a run of mask = 1 in a row; it ends (terminal state, no bootstrap) where the
    next position is masked out. G_t = r_t + gamma * ((1 - lam) * V_{t+1} + lam * G_{t+1}),
    computed as GAE: A_t = delta_t + gamma * lam * A_{t+1}, G_t = A_t + V_t. lam = 0 is TD(0),
    lam = 1 the Monte-Carlo return.
    """
    with torch.no_grad():
        values, rewards, mask = values.float(), rewards.float(), mask.float()
        batch, width = values.shape
        advantages = torch.zeros_like(values)
        next_adv = values.new_zeros(batch)
        next_value = values.new_zeros(batch)
        next_mask = values.new_zeros(batch)
        for t in reversed(range(width)):
            m = mask[:, t]
            delta = rewards[:, t] * m + gamma * next_value * next_mask - values[:, t]
            adv = (delta + gamma * lam * next_adv * next_mask) * m
            advantages[:, t] = adv
            next_adv, next_value, next_mask = adv, values[:, t], m
        return (advantages + values) * mask


def td_loss(values: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """0.5 * mean squared error over the masked-in positions; `weights` (B,) weight each row's
    positions (the mean is then weighted: rows count by weight x length)."""
    mask = mask.to(values.dtype)
    if weights is not None:
        mask = mask * weights.to(values.dtype)[:, None]
    return 0.5 * (((values - targets) ** 2) * mask).sum() / mask.sum().clamp(min=1e-12)


def rare_weights(rewards: list[float], power: float, *, bins: int = 10,
                 cap: float = 10.0) -> list[float]:
    """Per-rollout loss weights frequency(reward bin) ** -power, averaged to 1, capped at `cap`
    times the mean (`--rare-weight`; the inverse-frequency weighting of imbalanced regression,
    without its smoothing kernel). A reward with at most `bins` distinct values is binned by
    value (a sparse reward's hits form one bin), others in `bins` equal-width bins. A sparse
    reward's few hits then shape the values as much as its many misses."""
    r = np.asarray(rewards, dtype=float)
    if power == 0 or len(r) == 0 or cap <= 1:  # a cap of 1 leaves every weight at the mean
        return [1.0] * len(r)
    values, labels = np.unique(r, return_inverse=True)
    if len(values) > bins:
        edges = np.linspace(r.min(), r.max(), bins + 1)[1:-1]
        labels = np.searchsorted(edges, r, side="right")
    freq = np.bincount(labels)[labels] / len(r)
    raw = freq ** -float(power)
    capped = np.zeros(len(r), dtype=bool)
    while True:  # mean 1 with the capped ones at `cap`: scale the rest, cap any that pass it
        scale = (len(r) - cap * capped.sum()) / raw[~capped].sum()
        over = ~capped & (raw * scale > cap)
        if not over.any():
            return np.where(capped, cap, raw * scale).tolist()
        capped |= over


# --------------------------------------------------------------------------- batches

@dataclass
class Example:
    """One rollout as the value model sees it: its token ids and where the response begins."""

    ids: list[int]
    start: int  # first position whose state holds response text
    reward: float
    weight: float = 1.0  # the row's loss weight (`rare_weights`)
    # `--residual`: phi at each position of ids (the reward on the text so far; `shaping`)
    potential: list[float] = field(default_factory=list)
    # Candidate states (`consistency`): tokens packed after `ids`, each one's parent (an index
    # in ids + extra), and per state (its node, its candidates' nodes, their base probabilities).
    extra: list[int] = field(default_factory=list)
    extra_parent: list[int] = field(default_factory=list)
    states: list[tuple[int, list[int], list[float]]] = field(default_factory=list)


def response_start(tokenizer, prompt: str, response: str, ids: list[int]) -> int:
    """Index of the first token of `ids` (= encode(prompt + response)) holding response text.

    A tokenizer may merge the prompt's last characters with the response's first ones into one
    token; that token's state already contains response text, so it is a response position.
    Character offsets say it exactly (fast tokenizers); otherwise the first position where the
    tokenisation of the full text leaves that of the prompt alone is used. An empty response
    still gets one position, the last: the state its reward belongs to.
    """
    last = len(ids) - 1
    if response and getattr(tokenizer, "is_fast", False):
        enc = tokenizer(prompt + response, add_special_tokens=True, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(ids):
            return next((i for i, (_, end) in enumerate(enc["offset_mapping"])
                         if end > len(prompt)), last)
    prompt_ids = encode(tokenizer, prompt)
    n = 0
    while n < min(len(ids), len(prompt_ids)) and ids[n] == prompt_ids[n]:
        n += 1
    return min(n, last)


def make_example(tokenizer, prompt: str, response: str, reward: float) -> Example:
    """The value model's own tokenisation of `prompt + response` (through `encode`, as scoring
    does), with its response boundary and reward."""
    ids = encode(tokenizer, prompt + response)
    return Example(ids, response_start(tokenizer, prompt, response, ids), float(reward))


@dataclass
class Batch:
    """Right-padded tensors of a micro-batch; `reward` holds each row's reward on its last
    response token, `potentials` phi at each position (zeros without `--residual`)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    rewards: torch.Tensor
    weights: torch.Tensor  # (B,) each row's loss weight
    potentials: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device) -> Batch:
        return Batch(*(getattr(self, f.name).to(device) for f in fields(self)))


def collate(examples: list[Example], pad_id: int) -> Batch:
    width = max(len(e.ids) for e in examples)
    shape = (len(examples), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    attention = torch.zeros(shape, dtype=torch.long)
    response = torch.zeros(shape, dtype=torch.float32)
    rewards = torch.zeros(shape, dtype=torch.float32)
    potentials = torch.zeros(shape, dtype=torch.float32)
    for row, e in enumerate(examples):
        n = len(e.ids)
        input_ids[row, :n] = torch.tensor(e.ids, dtype=torch.long)
        attention[row, :n] = 1
        response[row, e.start:n] = 1.0
        rewards[row, n - 1] = e.reward
        if e.potential:
            potentials[row, :n] = torch.tensor(e.potential, dtype=torch.float32)
    weights = torch.tensor([e.weight for e in examples], dtype=torch.float32)
    return Batch(input_ids, attention, response, rewards, weights, potentials)
