"""`py:module:function` value functions (docs/design.md §5.4).

The callable sees text, not tokens: `fn(prompt, continuations) -> list[float]`, where each
continuation is the response so far plus one candidate's text. That keeps user value functions
independent of any tokenizer, and lets heuristics stand in for a trained model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ..errors import ValueSpecError

ValueCallable = Callable[[str, list[str]], Sequence[float]]


class CallableValue:
    """Adapts a Python callable to the `ValueFunction` protocol, checking what it returns.

    A wrong-length or non-finite answer would silently skew the reweighting (docs/design.md §1),
    so it fails loudly with the function's name instead.
    """

    def __init__(self, fn: ValueCallable, name: str):
        self.fn = fn
        self.name = name

    def __repr__(self) -> str:
        return f"CallableValue({self.name!r})"

    def score(self, prompt: str, response: str, candidates: list[str]) -> list[float]:
        continuations = [response + c for c in candidates]
        out = self.fn(prompt, continuations)
        return self._check(out, len(candidates))

    def _check(self, out: object, expected: int) -> list[float]:
        where = f"value function {self.name!r}"
        try:
            values = [float(v) for v in out]  # type: ignore[union-attr]
        except (TypeError, ValueError) as exc:
            raise ValueSpecError(f"{where} must return a list of floats, got "
                                 f"{type(out).__name__} ({exc})") from exc
        if len(values) != expected:
            raise ValueSpecError(f"{where} returned {len(values)} values for {expected} "
                                 "continuations; it must return one float per continuation")
        if not all(math.isfinite(v) for v in values):
            raise ValueSpecError(f"{where} returned a non-finite value (nan/inf); "
                                 "values must be finite floats")
        return values


def committed(text: str) -> str:
    """The text up to its last whitespace: the words already finished. A word's first token
    ("ext") would otherwise be read as a whole, short word until the rest ("raordinary")
    comes, which is where a reward read on partial text misleads most (docs/design.md §1.12)."""
    return text[:max(text.rfind(c) for c in " \n\t\r") + 1]


def potential(reward, words: bool = False):
    """phi of a `--residual` value: the reward read on the text so far, or with `words` on its
    finished words only (`committed`)."""
    if not words:
        return reward
    return lambda prompts, texts: reward(prompts, [committed(t) for t in texts])


def reward_value(reward, name: str) -> CallableValue:
    """The reward itself as a value: V(s·a) = r(prompt, response so far + a), no training.

    ARGS's scoring (Khanov et al. 2024, arXiv 2402.01694). It ranks a state's candidates by what
    they add to the text now and sees nothing of what follows: strong where the reward shows in
    partial text (repeated words, sentiment), misleading or blank where it does not (a mean over
    words to come, a question not yet asked); docs/training/prefix/ measures both. Its units are
    the reward's own (no training set gives an sd to divide by): pick beta with `calibrate`.
    """
    return CallableValue(lambda prompt, continuations: reward([prompt] * len(continuations),
                                                              continuations), name)
