"""Value models behind one interface (DESIGN §5 Value SPEC).

A value function scores, for a state (prompt, response so far), each candidate next token:
`score(prompt, response, candidates) -> list[float]`, one value per candidate text. Two kinds:

- a trained checkpoint directory (`checkpoint.CheckpointValue`): transformers backbone + scalar
  head (+ LoRA), re-tokenising prompt + response + candidate with its own tokenizer;
- `py:module:function` (`callable.CallableValue`): `f(prompt, continuations) -> list[float]`
  where each continuation is the response so far plus one candidate's text.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class ValueFunction(Protocol):
    name: str

    def score(self, prompt: str, response: str, candidates: list[str]) -> list[float]:
        """One value per candidate: expected final reward after appending it to the response."""
        ...


def load_value(spec: str, *, name: str | None = None, device: str = "cpu",
               dtype: str | None = None) -> ValueFunction:
    """Load a value SPEC: `py:module:function` or a checkpoint directory ("bundled:NAME" for the
    models shipped in the package)."""
    from .loader import load_value as _load

    return _load(spec, name=name, device=device, dtype=dtype)
