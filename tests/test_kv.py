"""The guard for values/kv.py, the only code that relies on transformers' cache internals.

Run it on every transformers upgrade, before moving the bound in pyproject.toml (kv.SUPPORTED
names the tested range). The prefix-KV tree scorer must equal full recomputation on real
models, over decode steps that grow, shrink and diverge; the hand-built cache must continue
exactly like the one transformers builds; and kv.py's assumptions about the cache classes must
hold, or kv.py must say which versions it supports instead of failing obscurely.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch

from vas_proxy.assets import DATA_DIR
from vas_proxy.values import kv, scorer
from vas_proxy.values.model import tiny_value_model
from vas_proxy.values.scorer import CheckpointValue


# float32: reused and recomputed attention differ by summation order only (~1e-6 measured
# on SmolLM2's 30 layers, whose values are in reward-sd units).
ATOL = 1e-4
PROMPT = "<|im_start|>user\nSay something about cats.<|im_end|>\n<|im_start|>assistant\n"
OTHER = "<|im_start|>user\nWrite a haiku.<|im_end|>\n<|im_start|>assistant\n"
CANDIDATES = [" Cats", " cat", "s", "", "\n", " 🐱", "'s", "ing", "\xa0", " the"]
# (prompt, response) as decoders produce them: growing one token at a time, a roll-back (the
# stored prefix must be cropped), a rewrite of the last word, another stream interleaved.
STEPS = [(PROMPT, ""), (PROMPT, " Cats"), (PROMPT, " Cats are"), (PROMPT, " Cats are wonder"),
         (PROMPT, " Cats are wonderful"), (PROMPT, " Cats"), (PROMPT, " Cats were"),
         (OTHER, ""), (OTHER, " Soft"), (PROMPT, " Cats were wonderful pets"), (PROMPT, " Dogs")]
ROLLBACK = STEPS.index((PROMPT, " Cats"), 2)


@pytest.fixture(scope="module", params=["tiny", "tiny-lora", "smollm2"])
def value(request) -> CheckpointValue:
    """tiny: a random 2-layer Llama; tiny-lora: the same under an unmerged peft wrapper (the
    cache argument goes through peft); smollm2: the bundled positivity model, real weights."""
    if request.param == "smollm2":
        return CheckpointValue.load(DATA_DIR / "values" / "positivity")
    model, tokenizer = tiny_value_model(seed=1, lora_r=4 if request.param == "tiny-lora" else 0)
    return CheckpointValue(model, tokenizer, request.param)


def test_tree_scorer_matches_full_recompute(value, monkeypatch):
    reused = []

    def spy(layers):
        reused.append(layers[0][0].shape[-2] if layers else 0)
        return kv.make_cache(layers)

    monkeypatch.setattr(scorer, "make_cache", spy)
    value.reset()
    assert value.use_cache
    full = CheckpointValue(value.model, value.tokenizer, "full", use_cache=False)
    full.scale = value.scale  # the checkpoint's reward-sd units
    spread = 0.0
    for prompt, response in STEPS:
        got = value.score(prompt, response, CANDIDATES)
        want = full.score(prompt, response, CANDIDATES)
        assert got == pytest.approx(want, abs=ATOL), (value.name, response)
        spread = max(spread, max(want) - min(want))
    assert spread > 10 * ATOL  # not a comparison between constants
    # The cache was really used: each step of a stream reuses the previous one's prefix, and
    # the roll-back reuses part of it (a crop), not all of it and not none.
    assert len(reused) == len(STEPS) and reused[0] == 0
    assert all(reused[i] > 0 for i in range(1, len(STEPS)) if STEPS[i][0] == STEPS[i - 1][0])
    assert 0 < reused[ROLLBACK] < reused[ROLLBACK - 1]


# A speculative chunk as the engine scores it: for position i, D_i + c for each of its k
# candidates, D_i the drafts before it. Candidates span several tokens, repeat a draft (so
# position i's strings contain position i+1's prefix), start alike, or are empty.
DRAFTS = [" Cats", " are", " wonder", "ful"]
CHAIN_CANDIDATES = [" Cats", " are", " wonder", "ful", " wonderful", " 🐱🐱", " unbelievably",
                    "'s", "s", "", "\n\n", " the", " the cat", "ing", "\xa0", " Dogs", " cat",
                    ", and", "...", " are not"]
# Chunks over a response: the first reads the prompt, the next follows a fully accepted
# chunk, the last a roll-back (the stored prefix is cropped).
CHUNKS = ["", " Cats are wonderful", " Cats"]


def chunk(drafts: list[str], candidates: list[str]) -> list[str]:
    return ["".join(drafts[:i]) + c for i in range(len(drafts)) for c in candidates]


def test_trie_scores_a_speculative_chunk_like_full_recompute(value, monkeypatch):
    """L = 4 positions x k = 20 candidates in one call equal full recomputation, and the packed
    row holds each distinct token path once: the drafts are not recomputed per candidate."""
    packed, reused = [], []
    monkeypatch.setattr(scorer, "tree_mask",
                        lambda parent, *a: packed.append(len(parent)) or kv.tree_mask(parent, *a))
    monkeypatch.setattr(scorer, "make_cache", lambda layers: reused.append(
        layers[0][0].shape[-2] if layers else 0) or kv.make_cache(layers))
    value.reset()
    full = CheckpointValue(value.model, value.tokenizer, "full", use_cache=False)
    full.scale = value.scale
    texts = chunk(DRAFTS, CHAIN_CANDIDATES)
    assert len(texts) == 80
    for response in CHUNKS:
        got = value.score(PROMPT, response, texts)
        want = full.score(PROMPT, response, texts)
        assert got == pytest.approx(want, abs=ATOL), (value.name, response)
        ids = [value.tokenizer(PROMPT + response + t)["input_ids"] for t in texts]
        shared = reused[-1]
        paths = {tuple(s[shared:j]) for s in ids for j in range(shared + 1, len(s) + 1)}
        assert packed[-1] == len(paths)  # one packed token per trie node
        assert packed[-1] < 0.6 * sum(len(s) - shared for s in ids)
    assert max(want) - min(want) > 10 * ATOL
    assert all(r > 0 for r in reused[1:])


def test_trie_duplicates_and_nested_candidates(value):
    """Duplicates share a node (equal values), a candidate whose tokens begin another's is read
    at an inner node, and identical candidates still keep one own token each (the cap)."""
    value.reset()
    full = CheckpointValue(value.model, value.tokenizer, "full", use_cache=False)
    full.scale = value.scale
    for candidates in ([" the", " the", " the cat", "", "", " the cat sat", "s", " the"],
                       [" Cats", " Cats"], ["", ""]):
        for response in ("", " Cats are"):
            got = value.score(PROMPT, response, candidates)
            assert got == pytest.approx(full.score(PROMPT, response, candidates), abs=ATOL)
            for i, c in enumerate(candidates):
                assert got[i] == got[candidates.index(c)]


def test_hand_built_cache_continues_like_transformers_own():
    """A cache made from stored tensors must continue a sequence exactly as the cache
    transformers built while reading the prefix, and must not write into those tensors."""
    model, tokenizer = tiny_value_model(seed=2)
    ids = torch.tensor([tokenizer(PROMPT + " Cats are wonderful")["input_ids"]])
    n = ids.shape[1] - 3
    with torch.inference_mode():
        _, own = model(ids[:, :n], use_cache=True)
        assert type(own).__name__ == "DynamicCache"
        stored = [(k.clone(), v.clone()) for k, v in kv.cache_tensors(own)]
        snapshot = [(k.clone(), v.clone()) for k, v in stored]
        assert len(stored) == model.base_config.num_hidden_layers
        assert all(k.shape[-2] == n for k, _ in stored)
        built = kv.make_cache(stored)
        assert built.get_seq_length() == n
        want, _ = model(ids[:, n:], past_key_values=own, use_cache=True)
        got, grown = model(ids[:, n:], past_key_values=built, use_cache=True)
    assert torch.equal(got, want)
    assert all(k.shape[-2] == n + 3 for k, _ in kv.cache_tensors(grown))
    assert all(torch.equal(k, k0[..., :n, :]) and torch.equal(v, v0[..., :n, :])
               for (k, v), (k0, v0) in zip(stored, kv.cache_tensors(grown)))
    assert all(torch.equal(k, k0) and torch.equal(v, v0)  # the inputs were not written into
               for (k, v), (k0, v0) in zip(stored, snapshot))


def test_lazy_initialization_sets_only_what_make_cache_sets():
    """make_cache skips `lazy_initialization` and assigns its fields itself: a version that
    adds bookkeeping there must be looked at before the bound moves."""
    import inspect

    from transformers.cache_utils import DynamicLayer

    layer = DynamicLayer()
    before = set(vars(layer))
    key = torch.zeros(1, 1, 1, 2)
    args = (key, key) if len(inspect.signature(layer.lazy_initialization).parameters) > 1 \
        else (key,)
    layer.lazy_initialization(*args)
    assert {"keys", "values"} <= before
    assert set(vars(layer)) - before <= set(kv.LAYER_FIELDS), set(vars(layer)) - before


def test_cache_api_check_passes_here():
    kv.check_cache_api.cache_clear()
    kv.check_cache_api()


class _NoKeys:
    """A layer as a version that renamed `keys`/`values` might have it."""

    def __init__(self):
        self.key_cache, self.value_cache = None, None

    def lazy_initialization(self, key_states, value_states):
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        return key_states, value_states


def _forgetful():
    """A layer whose `update` ignores what it holds (as a renamed `is_initialized` would)."""
    from transformers.cache_utils import DynamicLayer

    class Forgetful(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            self.keys, self.values = key_states, value_states
            return key_states, value_states

    return Forgetful


@pytest.mark.parametrize("layer, fragment", [(lambda: _NoKeys, "DynamicLayer lacks keys, values"),
                                             (_forgetful, "no longer appends")])
def test_unsupported_cache_layer_is_a_clear_error(monkeypatch, layer, fragment):
    import transformers
    import transformers.cache_utils

    monkeypatch.setattr(transformers.cache_utils, "DynamicLayer", layer())
    kv.check_cache_api.cache_clear()
    try:
        with pytest.raises(kv.TransformersAPIError) as err:
            kv.make_cache([(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))])
    finally:
        kv.check_cache_api.cache_clear()
    message = err.value.message
    assert fragment in message and kv.SUPPORTED in message
    assert transformers.__version__ in message and "\n" not in message


def test_tree_mask_visibility():
    """A packed token sees the cache, its trie ancestors and itself, never a sibling branch;
    its position is the cache length plus its depth."""
    parent = [-1, 0, 1, 1, 0, -1]  # two roots; node 1 has children 2 and 3
    mask, positions = kv.tree_mask(parent, past=2, dtype=torch.float32)
    seen = (mask[0, 0] == 0).int().tolist()
    assert mask.shape == (1, 1, 6, 8) and positions.tolist() == [[2, 3, 4, 4, 3, 2]]
    assert seen == [[1, 1, 1, 0, 0, 0, 0, 0],
                    [1, 1, 1, 1, 0, 0, 0, 0],
                    [1, 1, 1, 1, 1, 0, 0, 0],
                    [1, 1, 1, 1, 0, 1, 0, 0],
                    [1, 1, 1, 0, 0, 0, 1, 0],
                    [1, 1, 0, 0, 0, 0, 0, 1]]
    assert mask.min() == torch.finfo(torch.float32).min


def test_tree_mask_matches_walking_each_path():
    """The vectorised ancestor sets equal a plain walk up each node's path, on a random trie
    of a speculative chunk's size (a deep chain with bushes hanging off it)."""
    gen = torch.Generator().manual_seed(0)
    parent = [-1] + [int(torch.randint(0, i, (), generator=gen)) if i % 3 else i - 1
                     for i in range(1, 300)]
    mask, positions = kv.tree_mask(parent, past=5, dtype=torch.float32)
    want = torch.zeros(300, 305, dtype=torch.bool)
    want[:, :5] = True
    for i in range(300):
        node = i
        while node >= 0:
            want[i, 5 + node] = True
            node = parent[node]
    assert torch.equal(mask[0, 0] == 0, want)
    assert torch.equal(positions[0], want.sum(dim=1) - 1)


def test_supported_range_is_pyproject_bound_and_holds_the_installed_version():
    import transformers
    from packaging.specifiers import SpecifierSet

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    deps = [d for d in pyproject["project"]["dependencies"] if d.startswith("transformers")]
    assert deps == [f"transformers{kv.SUPPORTED}"]
    assert transformers.__version__ in SpecifierSet(kv.SUPPORTED)
