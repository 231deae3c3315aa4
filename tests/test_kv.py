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
    """Shared tokens see the cache and earlier shared tokens; a candidate's token also sees
    its own earlier tokens, never another candidate's."""
    owner = torch.tensor([-1, -1, 0, 0, 1])
    positions = torch.tensor([2, 3, 4, 5, 4])
    mask = kv.tree_mask(owner, positions, past=2, dtype=torch.float32)[0, 0]
    seen = (mask == 0).int().tolist()
    assert mask.shape == (5, 7)
    assert seen == [[1, 1, 1, 0, 0, 0, 0],
                    [1, 1, 1, 1, 0, 0, 0],
                    [1, 1, 1, 1, 1, 0, 0],
                    [1, 1, 1, 1, 1, 1, 0],
                    [1, 1, 1, 1, 0, 0, 1]]
    assert mask.min() == torch.finfo(torch.float32).min


def test_supported_range_is_pyproject_bound_and_holds_the_installed_version():
    import transformers
    from packaging.specifiers import SpecifierSet

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    deps = [d for d in pyproject["project"]["dependencies"] if d.startswith("transformers")]
    assert deps == [f"transformers{kv.SUPPORTED}"]
    assert transformers.__version__ in SpecifierSet(kv.SUPPORTED)
