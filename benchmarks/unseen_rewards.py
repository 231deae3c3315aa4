"""Two rewards held back from the value-model recipe's development (issue 13, deliverable 4).

Defined and committed before any recipe ablation ran, and used only for the recipe's
first-time result: `--reward py:unseen_rewards:diversity` (run from benchmarks/, or with it on
PYTHONPATH). They differ in kind from vader (sentiment) and plain (word length):

- `diversity` (dense): distinct words / words, in [0, 1]; 0 without a word. It rewards a
  response that does not repeat itself.
- `asks` (sparse): 1 when the response asks a question (holds a "?"), else 0. Chosen for its
  rate: 6 of 128 base responses of the vader frontier (4.7%) hold one, about the sparsity of
  the personalisation reward that failed in issue 13's report.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")


def diversity(prompts: list[str], responses: list[str]) -> list[float]:
    out = []
    for r in responses:
        words = [w.lower() for w in _WORD.findall(r)]
        out.append(len(set(words)) / len(words) if words else 0.0)
    return out


def asks(prompts: list[str], responses: list[str]) -> list[float]:
    return [1.0 if "?" in r else 0.0 for r in responses]
