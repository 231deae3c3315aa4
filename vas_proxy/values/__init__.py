"""Value models behind one interface (docs/design.md §5.4).

A value function scores, for a state (prompt, response so far), each candidate next token:
`score(prompt, response, candidates) -> list[float]`, one value per candidate text. Two kinds:

- a trained checkpoint directory (`scorer.CheckpointValue`): transformers backbone + scalar
  head (+ LoRA), re-tokenising prompt + response + candidate with its own tokenizer;
- `py:module:function` (`callable.CallableValue`): `f(prompt, continuations) -> list[float]`
  where each continuation is the response so far plus one candidate's text.

`loader.load_value` turns a SPEC into either.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class ValueFunction(Protocol):
    name: str

    def score(self, prompt: str, response: str, candidates: list[str]) -> list[float]:
        """One value per candidate: expected final reward after appending it to the response."""
        ...

