"""`train --residual`: the value is the reward read on the text so far plus the model, TD(lambda)
fits the sum, and the checkpoint adds the reward back when it scores (docs/design.md §1.12)."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vas_proxy.errors import ConfigError, ValueSpecError
from vas_proxy.train.config import TrainConfig
from vas_proxy.train.shaping import add_potentials, position_texts
from vas_proxy.train.td import Example, collate, lambda_returns, make_example, td_loss


@pytest.fixture(scope="module")
def tokenizer():
    from vas_proxy.values.model import smollm2_tokenizer

    return smollm2_tokenizer()


def count_e(prompts, responses):
    """A reward any prefix shows: the number of letters e."""
    return [float(r.count("e")) for r in responses]


class Slow:
    """The same tokenizer without character offsets: position_texts must decode instead."""

    is_fast = False

    def __init__(self, tok):
        self.tok = tok

    def decode(self, ids, **kw):
        return self.tok.decode(ids, **kw)


@pytest.mark.parametrize("response", ["Hello there, friend!", "\n\nHello", "é été 🙂 ok", ""])
def test_position_texts_are_the_text_each_state_holds(tokenizer, chat_prompt, response):
    prompt = chat_prompt("hi")
    e = make_example(tokenizer, prompt, response, 0.0)
    texts = position_texts(tokenizer, prompt, response, e.ids, e.start)
    assert len(texts) == len(e.ids) - e.start
    assert texts[-1] == response  # the last state holds the whole response: phi = the reward
    assert all(response.startswith(t) for t in texts)
    assert all(len(a) <= len(b) for a, b in itertools.pairwise(texts))
    if response:
        # each state's text is what its tokens decode to, less the prompt
        for t, text in zip(range(e.start, len(e.ids) - 1), texts):
            decoded = tokenizer.decode(e.ids[:t + 1])
            if "\ufffd" not in decoded:  # a split multi-byte character decodes to U+FFFD
                assert prompt + text == decoded
        slow = position_texts(Slow(tokenizer), prompt, response, e.ids, e.start)
        assert slow[-1] == response and len(slow) == len(texts)


def test_potentials_are_the_reward_on_each_state_and_zero_before(tokenizer):
    prompts = ["Q: hi\nA:", "Q: yo\nA:"]
    responses = [" here we are, the end", " yes"]
    examples = [make_example(tokenizer, p, r, count_e([p], [r])[0])
                for p, r in zip(prompts, responses)]
    calls = []

    def reward(p, r):
        calls.append(len(r))
        return count_e(p, r)

    shaped = add_potentials(tokenizer, examples, prompts, responses, reward, batch_size=4,
                            progress=False)
    for e, p, r in zip(shaped, prompts, responses):
        assert len(e.potential) == len(e.ids)
        assert e.potential[:e.start] == [0.0] * e.start
        texts = position_texts(tokenizer, p, r, e.ids, e.start)
        assert e.potential[e.start:] == count_e(None, texts)
        assert e.potential[-1] == e.reward  # at the end phi is the reward: U's target is 0
    assert max(calls) <= 4  # batched
    batch = collate(shaped, pad_id=0)
    assert batch.potentials[0, :len(shaped[0].ids)].tolist() == shaped[0].potential
    assert batch.potentials[1, len(shaped[1].ids):].abs().sum() == 0


def test_residual_targets_vanish_where_the_text_already_shows_the_reward(tmp_path):
    """phi = the final reward at every position: V = phi is already exact, so the untrained
    residual model (zero head weights, bias at mean(r - phi) = 0) has TD loss 0; the same model
    without phi does not. Then training moves only U, and V = U + phi."""
    from vas_proxy.train.backbone import build_model
    from vas_proxy.train.trainer import Trainer

    cfg = TrainConfig(prompts="-", reward="py:x:y", out=str(tmp_path), backbone="tiny", lora_r=4,
                      epochs=1, batch_size=2, residual=True, quiet=True)
    model, tok = build_model(cfg)
    texts, rewards = ["Hello there", "Bye now", "So it goes", "Well well"], (1.0, -2.0, 0.5, 3.0)
    examples = []
    for t, r in zip(texts, rewards):
        ids = tok(t)["input_ids"]
        examples.append(Example(ids, 1, r, potential=[0.0] + [r] * (len(ids) - 1)))
    trainer = Trainer(cfg, model, tok, examples, tmp_path)
    assert float(model.head.bias.detach()) == pytest.approx(0.0)
    for shaped in (True, False):
        batch = collate(examples if shaped else [Example(e.ids, 1, e.reward) for e in examples],
                        pad_id=0)
        u, _ = model(batch.input_ids, attention_mask=batch.attention_mask)
        v = u + batch.potentials
        loss = td_loss(v, lambda_returns(v.detach(), batch.rewards, batch.response_mask),
                       batch.response_mask)
        assert (float(loss) < 1e-10) == shaped
    stats = trainer.train_step([[0, 1]])
    assert stats["loss"] < 1e-10  # the step's own loss: the same V = U + phi


def test_residual_with_consistency_and_words_without_residual_are_refused():
    from vas_proxy.train.command import check_config

    cfg = TrainConfig(prompts="p", reward="vader", out="o", residual=True, consistency=1.0)
    with pytest.raises(ConfigError, match="--residual and --consistency"):
        check_config(cfg)
    with pytest.raises(ConfigError, match="--residual-words needs --residual"):
        check_config(TrainConfig(prompts="p", reward="vader", out="o", residual_words=True))


def test_committed_keeps_the_finished_words():
    from vas_proxy.values.callable import committed, potential

    assert committed("Hello, wor") == "Hello, "
    assert committed("Hello there\nfri") == "Hello there\n"
    assert committed("ext") == "" and committed("") == "" and committed("a b ") == "a b "
    phi = potential(count_e, words=True)
    assert phi(["p", "p"], ["here we", "here"]) == [2.0, 0.0]
    assert potential(count_e) is count_e


@pytest.fixture(scope="module")
def residual_run(upstream, tmp_path_factory):
    from test_train import tiny_config

    from vas_proxy.train.command import run

    tmp = tmp_path_factory.mktemp("residual")
    cfg = tiny_config(tmp, upstream, residual=True, standardize=True)
    summary = asyncio.run(run(cfg))
    return cfg, summary


def test_a_residual_checkpoint_scores_the_reward_plus_its_model(residual_run):
    """Through the real upstream: the run records the reward it shaped with, validates V = U +
    phi, and the loaded checkpoint adds VADER on the response so far + each candidate (in sd
    units, like any checkpoint)."""
    from vas_proxy.rewards import load_reward
    from vas_proxy.train.validation import predict_last
    from vas_proxy.values.loader import load_value
    from vas_proxy.values.store import read_checkpoint_config

    cfg, summary = residual_run
    out = Path(cfg.out)
    meta = read_checkpoint_config(out)["metadata"]
    assert meta["residual"] == "vader" and meta["args"]["residual"] is True
    value = load_value(str(out), name="r")
    assert value.potential is not None
    prompt, response = "Hello", " it is"
    cands = [" wonderful", " awful", " the"]
    scored = value.score(prompt, response, cands)
    u = predict_last(value.model, value.tokenizer, [prompt + response + c for c in cands])
    phi = load_reward("vader")([prompt] * 3, [response + c for c in cands])
    assert scored == pytest.approx([(a + b) * value.scale for a, b in zip(u, phi)], abs=1e-5)
    assert phi[0] > phi[2] > phi[1]  # the reward part ranks them, whatever U learned
    # the validation that ran saw phi too: V of a final response ~ its reward, not U alone
    val = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
           if json.loads(line)["kind"] == "validation"][-1]
    assert val["val_final_n"] >= 1 and summary["verdict"]["label"]
    # the verdict sets the model against the reward alone: the untrained validation
    assert "the reward alone on the text so far" in summary["verdict"]["quality"]
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["residual"] is True


def test_a_residual_checkpoint_whose_reward_cannot_load_says_so(residual_run, tmp_path):
    from vas_proxy.values.loader import load_value

    cfg, _ = residual_run
    out = tmp_path / "copy"
    shutil.copytree(cfg.out, out)
    config = json.loads((out / "vas_value.json").read_text())
    config["metadata"]["residual"] = "py:no_such_module_here:f"
    (out / "vas_value.json").write_text(json.dumps(config))
    with pytest.raises(ValueSpecError, match="--residual on reward 'py:no_such_module_here:f'"):
        load_value(str(out))


def test_a_words_residual_checkpoint_reads_only_finished_words(residual_run, tmp_path):
    """`--residual-words`, recorded in the checkpoint: phi is the reward on the text up to its
    last whitespace, so candidates that only start a word share it."""
    from vas_proxy.rewards import load_reward
    from vas_proxy.train.validation import predict_last
    from vas_proxy.values.loader import load_value

    cfg, _ = residual_run
    out = tmp_path / "copy"
    shutil.copytree(cfg.out, out)
    config = json.loads((out / "vas_value.json").read_text())
    config["metadata"]["residual_words"] = True
    (out / "vas_value.json").write_text(json.dumps(config))
    value = load_value(str(out), name="w")
    prompt, response = "Hello", " it is so"
    cands = [" wonderful", " awful", " wonderful "]
    scored = value.score(prompt, response, cands)
    u = predict_last(value.model, value.tokenizer, [prompt + response + c for c in cands])
    vader = load_reward("vader")
    phi = vader([prompt] * 3, [" it is so ", " it is so ", " it is so wonderful "])
    assert phi[0] == phi[1] != phi[2]
    assert scored == pytest.approx([(a + b) * value.scale for a, b in zip(u, phi)], abs=1e-5)


def test_resume_refuses_to_switch_residual_on(residual_run, tmp_path):
    from test_train import tiny_config

    from vas_proxy.train.command import run

    cfg, _ = residual_run
    out = tmp_path / "run"
    shutil.copytree(cfg.out, out)
    dead = type("Dead", (), {"base_url": "http://127.0.0.1:9/v1", "model": cfg.model})()
    again = tiny_config(Path(cfg.prompts).parent, dead, out=str(out), epochs=2, resume=True,
                        residual=False, standardize=True)
    with pytest.raises(ConfigError, match=r"--residual True \(now False\)"):
        asyncio.run(run(again))
    assert np.isfinite(json.loads((out / "run.json").read_text())["lr"])


def test_a_words_residual_run_records_and_trains_on_finished_words(upstream, tmp_path):
    from test_train import tiny_config

    from vas_proxy.train.command import run
    from vas_proxy.values.store import read_checkpoint_config

    cfg = tiny_config(tmp_path, upstream, residual=True, residual_words=True, save_every=0)
    asyncio.run(run(cfg))
    meta = read_checkpoint_config(cfg.out)["metadata"]
    assert meta["residual"] == "vader" and meta["residual_words"] is True
    first = json.loads((Path(cfg.out) / "metrics.jsonl").read_text().splitlines()[0])
    assert first["kind"] == "validation" and first["step"] == 0
