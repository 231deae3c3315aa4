"""Value functions: spec loading, the heuristic default, and the checkpoint value model.

The checkpoint tests use a tiny random Llama (built once per module) with SmolLM2's tokenizer,
so they run in seconds on CPU and need no download.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap

import pytest
import torch

from vas_proxy.errors import CheckpointError, ValueSpecError
from vas_proxy.values import ValueFunction
from vas_proxy.values.callable import CallableValue
from vas_proxy.rewards import load_reward
from vas_proxy.values.loader import backbone_of, load_value
from vas_proxy.values.model import tiny_value_model
from vas_proxy.values.scorer import CheckpointValue
from vas_proxy.values.store import CONFIG_NAME, HEAD_NAME, reward_scale, save_checkpoint


ATOL = 1e-4  # float32: cached vs recomputed attention differ by summation order only (~1e-7)

PROMPT = "<|im_start|>user\nSay something about cats.<|im_end|>\n<|im_start|>assistant\n"
CANDIDATES = [" Cats", " cat", "s", "", "\n", " 🐱", "'s", "ing", "\xa0", " the"]
# Successive states as a decoder would produce them, plus a roll-back and a rewrite: the stored
# prefix must be cropped, not only extended.
STATES = ["", " Cats", " Cats are", " Cats are wonder", " Cats are wonderful",
          " Cats are", " Cats were", " Cats were wonderful pets", " Dogs"]


# --------------------------------------------------------------------------- py: specs

@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A throwaway importable module holding good and bad value callables."""
    (tmp_path / "my_values.py").write_text(textwrap.dedent("""
        def length(prompt, continuations):
            return [float(len(c)) for c in continuations]

        def short(prompt, continuations):
            return [0.0]

        def nan(prompt, continuations):
            return [float("nan")] * len(continuations)

        NOT_CALLABLE = 3

        def prompt_len_reward(prompts, responses):  # a reward: f(prompts, responses)
            return [float(len(p) + len(r)) for p, r in zip(prompts, responses)]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_values"
    sys.modules.pop("my_values", None)


def test_callable_spec_scores_response_plus_candidate(user_module):
    value = load_value(f"py:{user_module}:length", name="len")
    assert isinstance(value, CallableValue) and isinstance(value, ValueFunction)
    assert value.name == "len"
    assert value.score("p", "abc", ["", "d", "ef"]) == [3.0, 4.0, 5.0]


def test_callable_receives_prompt_and_continuations():
    seen = []
    value = CallableValue(lambda p, cs: seen.append((p, cs)) or [0.0] * len(cs), "spy")
    value.score("P", "R", ["a", "b"])
    assert seen == [("P", ["Ra", "Rb"])]


@pytest.mark.parametrize("spec, fragment", [
    ("nonsense:thing", "unknown value spec form"),
    ("py:no_such_module_xyz:f", "cannot import module"),
    ("py:my_values:missing", "has no attribute"),
    ("py:my_values:NOT_CALLABLE", "not a callable"),
    ("py:my_values", "expected py:module:function"),
    ("bundled:no-such-model", "no bundled value model"),
    ("/no/such/dir", "no such checkpoint directory"),
    ("", "empty value spec"),
])
def test_bad_specs_raise_value_spec_error(user_module, spec, fragment):
    with pytest.raises(ValueSpecError, match=fragment) as err:
        load_value(spec)
    assert "\n" not in err.value.message


@pytest.mark.parametrize("fn, fragment", [("short", "returned 1 values for 3"),
                                          ("nan", "non-finite")])
def test_bad_callable_results_raise(user_module, fn, fragment):
    value = load_value(f"py:{user_module}:{fn}")
    with pytest.raises(ValueSpecError, match=fragment) as err:
        value.score("p", "r", ["a", "b", "c"])
    assert fn in err.value.message


def test_positivity_heuristic_ranks_positive_words_higher():
    value = load_value("py:vas_proxy.values.heuristics:positivity")
    good, bad, neutral = value.score("How was it?", "It was", [" wonderful", " terrible", " a"])
    assert good > neutral > bad


# --------------------------------------------------------------------------- reward: specs

def test_reward_spec_scores_the_reward_on_the_text_so_far():
    value = load_value("reward:vader")
    assert isinstance(value, ValueFunction) and value.name == "reward:vader"
    candidates = [" wonderful", " terrible", " a"]
    expected = load_reward("vader")(["p"] * 3, ["It was" + c for c in candidates])
    assert value.score("How was it?", "It was", candidates) == expected
    good, bad, neutral = expected
    assert good > neutral > bad
    plain = load_value("reward:plain", name="short")
    assert plain.name == "short"
    short, long = plain.score("p", "It is", [" fun", " extraordinary"])
    assert short > long
    assert backbone_of("reward:plain") is None  # nothing to share a backbone with


def test_reward_spec_reads_the_prompt_where_the_reward_does(user_module):
    value = load_value(f"reward:py:{user_module}:prompt_len_reward")
    assert value.score("four", "", ["a", "bb"]) == [5.0, 6.0]


@pytest.mark.parametrize("spec, fragment", [("reward:", "empty reward spec"),
                                            ("reward:nonsense", "unknown reward spec"),
                                            ("reward:py:no_such_module_xyz:f",
                                             "cannot import module")])
def test_bad_reward_spec_is_a_one_line_value_spec_error(spec, fragment):
    with pytest.raises(ValueSpecError, match=fragment) as err:
        load_value(spec)
    assert spec in err.value.message and "\n" not in err.value.message


# --------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def tiny():
    return tiny_value_model(seed=0)


@pytest.fixture(scope="module")
def tiny_lora():
    return tiny_value_model(seed=1, lora_r=4)


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    model, tokenizer = tiny
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("ckpt"),
                           metadata={"reward": "vader"})


def _reference(value: CheckpointValue) -> CheckpointValue:
    return CheckpointValue(value.model, value.tokenizer, "ref", use_cache=False)


def test_tiny_values_are_not_constant(tiny):
    value = CheckpointValue(*tiny)
    scores = value.score(PROMPT, " Cats", CANDIDATES)
    assert len(scores) == len(CANDIDATES) and all(isinstance(s, float) for s in scores)
    assert max(scores) - min(scores) > 1e-3


def test_prefix_cache_matches_full_recompute(tiny):
    cached = CheckpointValue(*tiny)
    full = _reference(cached)
    for response in STATES:
        got = cached.score(PROMPT, response, CANDIDATES)
        want = full.score(PROMPT, response, CANDIDATES)
        assert got == pytest.approx(want, abs=ATOL), response
    # The decode stream reused one slot (a continuation or a short rewrite replaces it) ...
    assert len(cached._slots) <= 2
    # ... and an unrelated prompt interleaved with it neither breaks nor evicts it.
    other = cached.score("Completely different text.", "", CANDIDATES)
    assert other == pytest.approx(full.score("Completely different text.", "", CANDIDATES),
                                  abs=ATOL)
    assert cached.score(PROMPT, STATES[-1], CANDIDATES) == pytest.approx(
        full.score(PROMPT, STATES[-1], CANDIDATES), abs=ATOL)


def test_boundary_merging_candidates_and_single_candidate(tiny):
    """Candidates that merge with the response's last token shrink the shared prefix."""
    cached = CheckpointValue(*tiny)
    full = _reference(cached)
    for response, cands in [(" Cats are wonder", ["ful", "fully", " ful", ""]),
                            (" Cats are wonderful", [""]),  # one empty candidate (EOS)
                            ("", [""]),  # nothing at all: falls back to one special token
                            (" caf", ["\u00e9", "e\u0301", "\ufffd"])]:
        got = cached.score(PROMPT, response, cands)
        assert got == pytest.approx(full.score(PROMPT, response, cands), abs=ATOL)
    assert cached.score("", "", [""]) == pytest.approx(full.score("", "", [""]), abs=ATOL)
    assert cached.score(PROMPT, "x", []) == []


def test_cache_reuse_does_not_mutate_stored_prefix(tiny):
    value = CheckpointValue(*tiny)
    value.score(PROMPT, " Cats are", CANDIDATES)
    before = [(k.clone(), v.clone()) for k, v in value._slots[-1].layers]
    value.score(PROMPT, " Cats are", CANDIDATES)
    after = value._slots[-1].layers
    assert all(torch.equal(k0, k1) and torch.equal(v0, v1)
               for (k0, v0), (k1, v1) in zip(before, after))


def test_concurrent_callers_get_their_own_values(tiny):
    """The engine scores from worker threads; interleaved streams must not mix caches."""
    from concurrent.futures import ThreadPoolExecutor

    value = CheckpointValue(*tiny)
    full = _reference(value)
    jobs = [(prompt, response) for response in STATES[:5]
            for prompt in (PROMPT, "Write a poem.", "Q: 2+2?\nA:")]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda job: value.score(*job, CANDIDATES), jobs))
    for job, scores in zip(jobs, got):
        assert scores == pytest.approx(full.score(*job, CANDIDATES), abs=ATOL)


def test_save_load_round_trip_full(tiny, saved):
    original = CheckpointValue(*tiny)
    loaded = load_value(str(saved), name="tiny")
    assert isinstance(loaded, CheckpointValue) and loaded.name == "tiny"
    assert loaded.config["metadata"] == {"reward": "vader"}
    for response in STATES[:3]:
        assert loaded.score(PROMPT, response, CANDIDATES) == \
            original.score(PROMPT, response, CANDIDATES)


def test_values_are_in_units_of_the_training_reward_sd(tiny, tmp_path):
    """A checkpoint whose metadata records reward_std s scores V / s (beta in sd units)."""
    model, tokenizer = tiny
    path = save_checkpoint(model, tokenizer, tmp_path / "sd",
                           metadata={"reward": "vader", "reward_std": 0.25})
    loaded = load_value(str(path))
    assert loaded.scale == 4.0
    want = [4 * v for v in CheckpointValue(*tiny).score(PROMPT, " Cats", CANDIDATES)]
    assert loaded.score(PROMPT, " Cats", CANDIDATES) == pytest.approx(want, rel=1e-6)
    assert reward_scale({"metadata": {"reward_std": 0.0}}) == reward_scale({}) == 1.0


def test_binary_spec_wraps_any_value_and_knows_its_scale(tiny, tmp_path, user_module):
    """`binary:SPEC` scores as SPEC does and carries the scale that turns its scores back into
    probabilities (1 / reward_std for a checkpoint, 1 otherwise), for the engine's soft tilt;
    it shares a checkpoint's backbone like the bare spec."""
    from vas_proxy.values.binary import BinaryValue, binary_scales

    model, tokenizer = tiny
    path = save_checkpoint(model, tokenizer, tmp_path / "sd",
                           metadata={"reward": "asks", "reward_std": 0.25})
    wrapped = load_value(f"binary:{path}", name="asks")
    assert isinstance(wrapped, BinaryValue) and wrapped.name == "asks"
    assert wrapped.binary_scale == 4.0 and wrapped.batches_positions
    assert wrapped.score(PROMPT, " Cats", CANDIDATES) == load_value(str(path)).score(
        PROMPT, " Cats", CANDIDATES)
    assert backbone_of(f"binary:{path}") == backbone_of(str(path)) is not None
    py = load_value(f"binary:py:{user_module}:length")
    assert py.binary_scale == 1.0 and py.score("p", "abc", ["", "d"]) == [3.0, 4.0]
    assert backbone_of(f"binary:py:{user_module}:length") is None
    assert binary_scales({"a": wrapped, "b": load_value(str(path)), "c": py}) == \
        {"a": 4.0, "c": 1.0}


@pytest.mark.parametrize("spec", ["binary:", "binary:binary:reward:vader", "binary:  "])
def test_binary_spec_needs_one_inner_spec(spec):
    with pytest.raises(ValueSpecError, match="binary: takes one inner spec") as err:
        load_value(spec)
    assert "\n" not in err.value.message


def test_save_load_round_trip_lora(tiny_lora, tmp_path):
    model, tokenizer = tiny_lora
    path = save_checkpoint(model, tokenizer, tmp_path / "lora")
    config = json.loads((path / CONFIG_NAME).read_text())
    assert config["lora"]["r"] == 4 and (path / "adapter").is_dir()
    original = CheckpointValue(model, tokenizer)
    loaded = CheckpointValue.load(path)  # adapter merged into the backbone at load
    want = original.score(PROMPT, " Cats", CANDIDATES)
    assert loaded.score(PROMPT, " Cats", CANDIDATES) == pytest.approx(want, abs=1e-5)
    with model.backbone.disable_adapter():  # the adapter is not a no-op
        base = CheckpointValue(model, tokenizer).score(PROMPT, " Cats", CANDIDATES)
    assert max(abs(a - b) for a, b in zip(base, want)) > 1e-3


def test_bfloat16_load_on_cpu(tiny, saved):
    loaded = CheckpointValue.load(saved, dtype="bfloat16")
    assert loaded.model.backbone_dtype == torch.bfloat16
    got = loaded.score(PROMPT, " Cats", CANDIDATES)
    want = CheckpointValue(*tiny).score(PROMPT, " Cats", CANDIDATES)
    assert got == pytest.approx(want, abs=0.1)


def _broken_copy(saved, tmp_path, name):
    return shutil.copytree(saved, tmp_path / name)


def test_missing_config_is_checkpoint_error(saved, tmp_path):
    path = _broken_copy(saved, tmp_path, "nocfg")
    (path / CONFIG_NAME).unlink()
    with pytest.raises(CheckpointError, match="vas_value.json is missing"):
        load_value(str(path))


def test_unknown_format_version(saved, tmp_path):
    path = _broken_copy(saved, tmp_path, "v99")
    config = json.loads((path / CONFIG_NAME).read_text())
    config["format_version"] = 99
    (path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_value(str(path))


def test_missing_head(saved, tmp_path):
    path = _broken_copy(saved, tmp_path, "nohead")
    (path / HEAD_NAME).unlink()
    with pytest.raises(CheckpointError, match="head.safetensors is missing"):
        load_value(str(path))


def test_head_hidden_size_mismatch(saved, tmp_path):
    from safetensors.torch import save_file

    path = _broken_copy(saved, tmp_path, "badhead")
    save_file({"weight": torch.zeros(1, 7), "bias": torch.zeros(1)}, str(path / HEAD_NAME))
    with pytest.raises(CheckpointError, match="mismatch"):
        load_value(str(path))
    config = json.loads((path / CONFIG_NAME).read_text())
    config["hidden_size"] = 7  # config agrees with the head, the backbone does not
    (path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="backbone has 48"):
        load_value(str(path))


def test_missing_adapter(tiny_lora, tmp_path):
    path = save_checkpoint(*tiny_lora, tmp_path / "lora")
    shutil.rmtree(path / "adapter")
    with pytest.raises(CheckpointError, match="adapter"):
        load_value(str(path))
