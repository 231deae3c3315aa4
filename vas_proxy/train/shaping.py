"""`--residual`: the value model learns only what the reward has not yet shown (docs/design.md §1.12).

The value of a state is split as V(s) = phi(s) + U(s), where phi(s) is the reward itself read on
the response so far (what a `reward:SPEC` value reads) and U is the trained model. TD(lambda)
runs on V, so U's targets are the lambda-returns minus phi: at the last token phi is the reward
and U's target is 0, and elsewhere U has to learn only how the reward will still move. This is
potential-based shaping (Ng, Harada and Russell 1999) with the reward as its own potential; the
values it leads to, and so the policy guidance aims at, are those of plain TD.

phi is read at every response position of the value model's own tokenisation: the text a
position's state holds, as character offsets say (fast tokenizers) or by decoding.
`--residual-words` reads it on the finished words of that text only (`values.callable.committed`).
"""

from __future__ import annotations

import dataclasses
import itertools

from tqdm.auto import tqdm

from .td import Example


def position_texts(tokenizer, prompt: str, response: str, ids: list[int],
                   start: int) -> list[str]:
    """The response text each state `start..len(ids)-1` holds (the last: the whole response).

    `ids` is `encode(prompt + response)`, as `make_example` builds it."""
    full = prompt + response
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(full, add_special_tokens=True, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(ids):
            # a running maximum: special tokens have offsets (0, 0)
            ends = list(itertools.accumulate((end for _, end in enc["offset_mapping"]), max))
            texts = [full[len(prompt):max(end, len(prompt))] for end in ends[start:]]
            return texts[:-1] + [response] if texts else texts
    texts = []
    for t in range(start, len(ids)):
        decoded = tokenizer.decode(ids[:t + 1], skip_special_tokens=True)
        texts.append(decoded.removeprefix(prompt))
    return texts[:-1] + [response] if texts else texts


def add_potentials(tokenizer, examples: list[Example], prompts: list[str], responses: list[str],
                   phi, *, batch_size: int = 256, progress: bool = True) -> list[Example]:
    """`examples` with `phi(prompts, texts)` (the reward, or `values.callable.potential`'s
    reading of it) filled in at each response position (0 before the response).

    `prompts` are the texts the value model sees before the response (the upstream prompt), as
    `CheckpointValue.score` passes them to phi at guidance time. Each distinct (prompt, text)
    is scored once, in batches."""
    spans = [position_texts(tokenizer, p, r, e.ids, e.start)
             for e, p, r in zip(examples, prompts, responses)]
    keys = sorted({(p, t) for p, texts in zip(prompts, spans) for t in texts})
    scores: dict[tuple[str, str], float] = {}
    for i in tqdm(range(0, len(keys), batch_size), desc="residual: reward on text so far",
                  unit="batch", disable=not progress or not keys, dynamic_ncols=True):
        chunk = keys[i:i + batch_size]
        scores.update(zip(chunk, phi([p for p, _ in chunk], [t for _, t in chunk])))
    return [dataclasses.replace(e, potential=[0.0] * e.start + [scores[p, t] for t in texts])
            for e, p, texts in zip(examples, prompts, spans)]
