"""`--rare-weight` and `--consistency`: the weights, the packed candidate states (each node's
value must be exactly the value the engine would score for that string), the loss, and a
tiny end-to-end run through the real llama-cpp-python upstream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vas_proxy.train.consistency import add_states, collate_tree, consistency_loss
from vas_proxy.train.rollouts import Rollout
from vas_proxy.train.td import collate, make_example, rare_weights, td_loss
from vas_proxy.values.model import encode, tiny_value_model

PROMPT = "<|im_start|>user\nHow was your day?<|im_end|>\n<|im_start|>assistant\n"


def test_rare_weights_balance_a_sparse_reward():
    hits = [1.0] + [0.0] * 9
    full = rare_weights(hits, 1.0)
    assert np.mean(full) == pytest.approx(1.0)
    assert full[0] / full[1] == pytest.approx(9.0)  # 1/0.1 against 1/0.9
    half = rare_weights(hits, 0.5)
    assert half[0] / half[1] == pytest.approx(3.0)
    assert rare_weights(hits, 0.0) == [1.0] * 10
    # the cap binds: 1 hit in 1000 would weigh 999x at power 1
    capped = rare_weights([1.0] + [0.0] * 999, 1.0, cap=10.0)
    assert max(capped) / np.mean(capped) <= 10.0 + 1e-9 and np.mean(capped) == pytest.approx(1)
    assert rare_weights(hits, 1.0, cap=1.0) == [1.0] * 10  # no room above the mean: all equal
    # a dense reward: equal-width bins; the lone outlier weighs most
    dense = rare_weights(list(np.linspace(0, 0.09, 50)) + [1.0], 1.0)
    assert np.argmax(dense) == 50 and dense[0] == pytest.approx(dense[10])


def test_td_loss_weights_rows():
    values = torch.tensor([[1.0, 1.0], [3.0, 3.0]])
    targets = torch.zeros(2, 2)
    mask = torch.ones(2, 2)
    assert td_loss(values, targets, mask).item() == pytest.approx(0.5 * (1 + 9) / 2)
    assert td_loss(values, targets, mask, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.5)
    assert td_loss(values, targets, mask, torch.tensor([1.0, 3.0])).item() == \
        pytest.approx(0.5 * (2 * 1 + 3 * 2 * 9) / 8)


def rollout(response: str, tokens: list[str], top: list[list[list]], seed: int = 1) -> Rollout:
    return Rollout(0, 0, seed, "m", len(tokens), "How was your day?", PROMPT, response,
                   tokens, [-1.0] * len(tokens), "length", {"r": 0.5}, top)


def two_rollouts():
    a = rollout("It was great, thanks!", ["It", " was", " great", ",", " thanks", "!"],
                [[["It", -0.5], ["I", -1.5], ["My", -2.0]],
                 [[" was", -0.1], [" is", -2.5]],
                 [[" great", -0.7], [" fine", -1.0], [" awful", -3.0], [" ok", -3.2]],
                 [[",", -0.2], ["!", -1.8]],
                 [[" thanks", -0.4]],  # one candidate: no state here
                 [["!", -0.1], [".", -2.4], [" for", -3.0]]])
    b = rollout("Not bad", ["Not", " bad"], [[["Not", -1.0], ["Good", -0.5]],
                                             [[" bad", -0.3], [" good", -1.4]]], seed=2)
    return [a, b]


def test_packed_candidate_states_score_exactly_like_the_engine():
    model, tok = tiny_value_model(seed=3)
    rollouts = two_rollouts()
    examples = [make_example(tok, r.upstream_prompt, r.response, 0.5) for r in rollouts]
    examples = add_states(tok, examples, rollouts, k=3, states=8, seed=0)
    assert [len(e.states) for e in examples] == [5, 2]  # " thanks" alone is no state
    tb = collate_tree(examples, tok.pad_token_id, torch.float32)
    with torch.no_grad():
        packed, _ = model(tb.batch.input_ids, attention_mask=tb.mask, position_ids=tb.positions)
        plain, _ = model(collate(examples, tok.pad_token_id).input_ids)
    width = packed.shape[1]
    flat = packed.reshape(-1)
    # the rollouts' own positions are untouched by the packed candidates
    for row, e in enumerate(examples):
        assert torch.allclose(packed[row, :len(e.ids)], plain[row, :len(e.ids)], atol=1e-5)
    checked = 0
    for row, (e, r, ts) in enumerate(zip(examples, rollouts, ([0, 1, 2, 3, 5], [0, 1]))):
        for (node, cands, probs), t in zip(e.states, ts, strict=True):
            prefix = PROMPT + "".join(r.tokens[:t])
            assert float(flat[row * width + node]) == pytest.approx(_value(model, tok, prefix),
                                                                    abs=1e-5)
            texts = [c for c, _ in r.top[t][:3]]
            assert len(cands) == len(texts)
            for c_node, c in zip(cands, texts):
                assert float(flat[row * width + c_node]) == pytest.approx(
                    _value(model, tok, prefix + c), abs=1e-5)
                checked += 1
            lp = np.array([lp for _, lp in r.top[t][:3]])
            assert probs == pytest.approx(list(np.exp(lp) / np.exp(lp).sum()))
    assert checked == 3 + 2 + 3 + 2 + 3 + 2 + 2  # 5 states of a, 2 of b
    assert tb.batch.response_mask[:, width - 1].sum() == 0  # candidates carry no TD target


def _value(model, tok, text: str) -> float:
    with torch.no_grad():
        values, _ = model(torch.tensor([encode(tok, text)]))
    return float(values[0, -1])


def test_consistency_loss_and_its_gradient():
    _, tok = tiny_value_model(seed=4)
    rollouts = two_rollouts()
    examples = add_states(tok, [make_example(tok, r.upstream_prompt, r.response, 0.5)
                                for r in rollouts], rollouts, k=3, states=2, seed=0)
    examples[1].weight = 3.0
    assert [len(e.states) for e in examples] == [2, 2]
    tb = collate_tree(examples, tok.pad_token_id, torch.float32)
    values = torch.randn(tb.batch.input_ids.shape, requires_grad=True)
    loss = consistency_loss(values, tb)
    flat = values.detach().reshape(-1)
    width = values.shape[1]
    errs, ws = [], []
    for row, e in enumerate(examples):
        for node, cands, probs in e.states:
            mixed = sum(p * flat[row * width + c] for c, p in zip(cands, probs))
            errs.append(float(mixed - flat[row * width + node]) ** 2)
            ws.append(e.weight)
    assert loss.item() == pytest.approx(0.5 * np.dot(errs, ws) / sum(ws), rel=1e-5)
    loss.backward()
    grad = values.grad.reshape(-1)
    cand_nodes = {row * width + x for row, e in enumerate(examples) for _, c, _ in e.states
                  for x in c}
    state_nodes = {row * width + n for row, e in enumerate(examples) for n, _, _ in e.states}
    assert state_nodes - cand_nodes  # states that are no other state's candidate
    assert all(grad[i] == 0 for i in state_nodes - cand_nodes)  # V(s) is the detached target
    assert all(grad[i] != 0 for i in cand_nodes)
    assert grad.abs().sum() > 0


def test_a_rollout_without_top_k_gets_no_states():
    _, tok = tiny_value_model()
    r = rollout("Hi", ["Hi"], [])
    e = make_example(tok, r.upstream_prompt, r.response, 1.0)
    assert add_states(tok, [e], [r], k=6, states=8, seed=0)[0].states == []


# --------------------------------------------------------------------------- end to end

def test_tiny_run_with_consistency_and_rare_weight(upstream, tmp_path):
    from test_train import tiny_config

    from vas_proxy.train.command import run
    from vas_proxy.values.loader import load_value

    cfg = tiny_config(tmp_path, upstream, consistency=1.0, consistency_k=4,
                      consistency_states=3, rare_weight=0.5, max_tokens=8, save_every=0)
    summary = asyncio.run(run(cfg))
    out = Path(cfg.out)
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert all(len(r["top"]) == len(r["tokens"]) > 0 for r in rollouts)
    assert all(1 <= len(c) <= 4 for r in rollouts for c in r["top"])
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    cons = [s["consistency"] for s in steps if s["kind"] == "train"]
    assert cons and all(c > 0 for c in cons)  # the random-init values are not consistent
    run_cfg = json.loads((out / "run.json").read_text())
    assert run_cfg["consistency"] == 1.0 and run_cfg["rare_weight"] == 0.5
    value = load_value(str(out), quiet=True)
    assert len(value.score(PROMPT, "It was", [" great", " bad"])) == 2
    assert summary["steps"] >= 1


def test_bad_consistency_and_rare_weight_flags_are_one_line_errors(tmp_path):
    from test_train import assert_one_line_error, cli

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    common = ("--prompts", str(prompts), "--reward", "vader", "--out", str(tmp_path / "o"))
    for flag in ("--consistency", "--branches"):
        assert_one_line_error(cli(*common, flag, "1", "--no-logprobs"),
                              "need the rollouts' top-k logprobs: drop --no-logprobs")
    assert_one_line_error(cli(*common, "--branches", "2", "--branch-k", "1"),
                          "--branch-k >= 2")
    assert_one_line_error(cli(*common, "--rare-weight", "-1"), "--rare-weight must be >= 0")
    assert_one_line_error(cli(*common, "--consistency", "1", "--consistency-k", "1"),
                          "--consistency-k must be >= 2")


def test_a_string_that_shares_nothing_with_the_rollout_is_packed_as_a_root():
    from vas_proxy.train.consistency import _attach

    model, tok = tiny_value_model(seed=5)
    e = make_example(tok, PROMPT, "It was", 0.0)
    other = encode(tok, "Completely different text")
    assert other[0] != e.ids[0]
    extra, parent = [], []
    node = _attach(other, e.ids, extra, parent)
    assert parent[0] == -1 and extra == other
    e.extra, e.extra_parent = extra, parent
    e.states = [(len(e.ids) - 1, [node], [1.0])]
    tb = collate_tree([e], tok.pad_token_id, torch.float32)
    with torch.no_grad():
        packed, _ = model(tb.batch.input_ids, attention_mask=tb.mask, position_ids=tb.positions)
    assert float(packed[0, node]) == pytest.approx(_value(model, tok, "Completely different text"),
                                                   abs=1e-5)
