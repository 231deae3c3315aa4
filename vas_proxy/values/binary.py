"""`binary:SPEC`: the value of a 0/1 reward, guided by its exact soft tilt (docs/design.md §1.13).

For a reward that is 0 or 1 (the answer asks a question, passes a check), E[exp(b·r) | s, a]
= 1 + (e^b − 1)·P(r = 1 | s, a), so the optimum of reward − KL/b, taken one step at a time, is
known from the expected value alone: q ∝ p·(1 + (e^b − 1)·P), no retraining. VAS's own
p·exp(b·P) agrees with it only to first order in b. The wrapped model scores as before; the
engine reads `binary_scale` and applies the other tilt (`sampling.combine_values`).
"""

from __future__ import annotations

from . import ValueFunction


class BinaryValue:
    """A value function whose scores are P(r = 1)·`binary_scale` (the inner one's units)."""

    def __init__(self, inner: ValueFunction, name: str):
        self.inner = inner
        self.name = name
        # a checkpoint scores P / sd (`store.reward_scale`); py: and reward: values score P
        self.binary_scale = float(getattr(inner, "scale", 1.0)) or 1.0
        self.batches_positions = getattr(inner, "batches_positions", False)

    def __repr__(self) -> str:
        return f"BinaryValue({self.inner!r})"

    def score(self, prompt: str, response: str, candidates: list[str]) -> list[float]:
        return self.inner.score(prompt, response, candidates)


def binary_scales(values: dict) -> dict[str, float]:
    """name → scale of the `binary:` value functions among `values` (for `combine_values`)."""
    return {name: v.binary_scale for name, v in values.items()
            if getattr(v, "binary_scale", None)}
