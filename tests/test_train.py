"""`vas-proxy train`: TD(lambda) math, batches, prompts, rollouts from the real upstream, a tiny
end-to-end run, resumption, and one-line CLI errors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vas_proxy.assets import smollm2_gguf
from vas_proxy.errors import ConfigError
from vas_proxy.rewards import RewardError, load_reward
from vas_proxy.train.collect import heldout_prompts
from vas_proxy.train.command import run
from vas_proxy.train.config import TrainConfig
from vas_proxy.train.prompts import PromptsError, read_prompts, render_prompts
from vas_proxy.train.rollouts import JsonlStore, Rollout, derive_seed, score_rollouts
from vas_proxy.train.td import collate, lambda_returns, make_example, td_loss

ROOT = Path(__file__).resolve().parents[1]


def returns(values, rewards, mask, gamma=1.0, lam=0.95):
    t = lambda_returns(torch.tensor(values), torch.tensor(rewards), torch.tensor(mask),
                       gamma, lam)
    return t.tolist()


# --------------------------------------------------------------------------- TD(lambda)

@pytest.mark.parametrize("lam, expected", [
    (0.0, [0.2, 0.3, 1.0]),  # TD(0): r_t + V_{t+1}; the last state gets the reward
    (1.0, [1.0, 1.0, 1.0]),  # Monte Carlo: the final reward everywhere (gamma = 1)
    # G2 = 1; G1 = .05 * .3 + .95 * 1 = .965; G0 = .05 * .2 + .95 * .965 = .92675
    (0.95, [0.92675, 0.965, 1.0]),
])
def test_lambda_returns_by_hand(lam, expected):
    got = returns([[0.1, 0.2, 0.3]], [[0.0, 0.0, 1.0]], [[1.0, 1.0, 1.0]], lam=lam)
    assert got[0] == pytest.approx(expected)


def test_lambda_returns_ragged_batch_with_prompt_and_padding_masked():
    values = [[0.1, 0.2, 0.3, 0.0],
              [9.0, 0.5, -0.2, 7.0]]  # row 2: a prompt position, two response tokens, padding
    rewards = [[0.0, 0.0, 1.0, 0.0],
               [0.0, 0.0, -1.0, 0.0]]
    mask = [[1.0, 1.0, 1.0, 0.0],
            [0.0, 1.0, 1.0, 0.0]]
    got = returns(values, rewards, mask)
    assert got[0] == pytest.approx([0.92675, 0.965, 1.0, 0.0])
    # G2 = -1; G1 = .05 * -.2 + .95 * -1 = -.96; masked positions are 0 and never bootstrap
    assert got[1] == pytest.approx([0.0, -0.96, -1.0, 0.0])


def test_lambda_returns_with_discount_and_no_gradient():
    values = torch.tensor([[0.4, 0.8]], requires_grad=True)
    got = lambda_returns(values, torch.tensor([[0.0, 1.0]]), torch.ones(1, 2), 0.9, 0.5)
    assert not got.requires_grad
    assert got[0].tolist() == pytest.approx([0.9 * (0.5 * 0.8 + 0.5 * 1.0), 1.0])


def test_td_loss_is_half_mse_over_masked_positions():
    values = torch.tensor([[1.0, 2.0, 5.0]])
    targets = torch.tensor([[0.0, 0.0, 0.0]])
    loss = td_loss(values, targets, torch.tensor([[0.0, 1.0, 1.0]]))
    assert float(loss) == pytest.approx(0.5 * (4 + 25) / 2)


# --------------------------------------------------------------------------- batches

@pytest.fixture(scope="module")
def tokenizer():
    from vas_proxy.values.model import smollm2_tokenizer

    return smollm2_tokenizer()


def test_response_boundary_with_a_merged_token(tokenizer, chat_prompt):
    prompt = chat_prompt("hi")  # ends with "assistant\n"
    plain = make_example(tokenizer, prompt, "Hello there!", 0.5)
    assert tokenizer.decode(plain.ids[plain.start:]) == "Hello there!"
    # "\n" + "\n..." merge into one token that already holds response text: it is a response
    # position, and the prompt's own last token is not.
    merged = make_example(tokenizer, prompt, "\n\nHello", 0.5)
    assert tokenizer.decode(merged.ids[merged.start:]).endswith("\nHello")
    assert tokenizer.decode(merged.ids[:merged.start]) != prompt
    assert merged.start == len(tokenizer(prompt)["input_ids"]) - 1
    empty = make_example(tokenizer, prompt, "", 0.5)
    assert empty.start == len(empty.ids) - 1  # the reward's state is the prompt itself


def test_collate_places_rewards_on_the_last_response_token(tokenizer):
    a = make_example(tokenizer, "Q: hi\nA:", " hello friend", 1.0)
    b = make_example(tokenizer, "Q: hi\nA:", " no", -1.0)
    batch = collate([a, b], pad_id=2)
    assert batch.input_ids.shape == (2, len(a.ids))
    assert batch.attention_mask[1].sum() == len(b.ids)
    assert batch.response_mask[0].tolist() == [0.0] * a.start + [1.0] * (len(a.ids) - a.start)
    assert batch.rewards[0, len(a.ids) - 1] == 1.0 and batch.rewards[1, len(b.ids) - 1] == -1.0
    assert batch.rewards.abs().sum() == 2.0


# --------------------------------------------------------------------------- prompts, split

def test_prompts_file_errors(tmp_path):
    with pytest.raises(PromptsError, match="does not exist"):
        read_prompts(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": oops}\n')
    with pytest.raises(PromptsError, match="line 2: bad JSON"):
        read_prompts(bad)
    bad.write_text('{"prompt": "fine"}\n\n{"text": "no"}\n')
    with pytest.raises(PromptsError, match="line 3: expected an object"):
        read_prompts(bad)
    bad.write_text('{"messages": [{"role": "user"}]}\n')
    with pytest.raises(PromptsError, match="line 1: \"messages\" must be"):
        read_prompts(bad)


def test_prompts_are_rendered_with_the_chat_template(tmp_path, chat_template):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "raw text"}\n'
                 '{"messages": [{"role": "user", "content": "Hello?"}]}\n')
    items = render_prompts(read_prompts(f), chat_template)
    assert items[0].upstream == items[0].text == "raw text"
    assert items[1].text == "Hello?"
    assert items[1].upstream == chat_template.render([{"role": "user", "content": "Hello?"}])
    with pytest.raises(PromptsError, match="no chat template"):
        render_prompts(read_prompts(f), None)


def test_heldout_split_is_seeded_and_leaves_training_prompts():
    assert heldout_prompts(10, 0.2, 0) == heldout_prompts(10, 0.2, 0)
    assert len(heldout_prompts(10, 0.2, 0)) == 2
    assert len(heldout_prompts(3, 0.01, 0)) == 1 and len(heldout_prompts(2, 0.9, 0)) == 1
    assert heldout_prompts(10, 0.0, 0) == set()
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)


def test_train_flags_become_the_config():
    """The flags parse into TrainConfig, whose keys run.json and checkpoints keep (--resume)."""
    from vas_proxy.cli import build_parser
    from vas_proxy.options import from_args

    a = build_parser().parse_args(["train", "--prompts", "p", "--reward", "vader", "--out", "o",
                                   "--lambda", "0.5", "--no-logprobs", "--dtype", "bfloat16"])
    cfg = from_args(TrainConfig, a)
    assert cfg == TrainConfig(prompts="p", reward="vader", out="o", lam=0.5, no_logprobs=True,
                              dtype="bfloat16")
    assert list(cfg.to_dict()) == [
        "prompts", "reward", "out", "upstream", "model", "provider", "chat_template", "timeout",
        "embedded",
        "backbone", "samples_per_prompt", "budget", "max_tokens", "extra_rollouts",
        "no_logprobs", "concurrency", "epochs", "min_steps",
        "lora_r", "lora_layers", "lr", "head_lr_mult", "standardize", "rare_weight",
        "consistency", "consistency_k", "consistency_states", "branches", "branch_k", "residual",
        "residual_words",
        "weight_decay", "batch_size",
        "grad_accum", "max_grad_norm", "gamma", "lam", "seed", "heldout_frac",
        "val_completions", "export", "save_every", "device", "dtype", "resume", "quiet"]


def test_within_prompt_correlation_ignores_what_only_tells_prompts_apart():
    from vas_proxy.train.validation import within_prompt_corr

    # the prediction knows each prompt's level and nothing within it: 1 across, -1 within
    target = [1.0, 1.2, 1.4, 5.0, 5.2, 5.4]
    pred = [1.4, 1.2, 1.0, 5.4, 5.2, 5.0]
    groups = [0, 0, 0, 1, 1, 1]
    assert np.corrcoef(pred, target)[0, 1] > 0.9
    got = within_prompt_corr(pred, target, groups, "h")
    assert got["h_within_corr"] == pytest.approx(-1.0) and got["h_within_n"] == 6
    assert within_prompt_corr(pred, target, [0, 1, 2, 3, 4, 5], "h") == {}  # one each


def test_budget_picks_samples_per_prompt_and_refuses_both(tmp_path):
    from vas_proxy.train.command import check_config, resolve_samples

    cfg = TrainConfig(prompts="p", reward="vader", out="o", quiet=True)
    assert resolve_samples(cfg, 10).samples_per_prompt == 16  # the default
    assert resolve_samples(TrainConfig(prompts="p", reward="vader", out="o", budget="300",
                                       quiet=True), 10).samples_per_prompt == 30
    both = TrainConfig(prompts="p", reward="vader", out="o", budget="300", samples_per_prompt=8)
    with pytest.raises(ConfigError, match="--budget picks --samples-per-prompt"):
        check_config(both)
    with pytest.raises(ConfigError, match="--export needs a trained model"):
        check_config(TrainConfig(prompts="p", reward="vader", out="o", epochs=0, export="x"))
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "hi"}\n')
    with pytest.raises(ConfigError, match="--budget 'lots'"):  # before anything loads
        asyncio.run(run(TrainConfig(prompts=str(bad), reward="vader", out=str(tmp_path / "o"),
                                    budget="lots")))


def test_reward_errors_name_the_rollout(tmp_path):
    def rollout(i, text):
        return Rollout(i, 0, 1, "m", 8, f"prompt {i}", f"<p>{i}", text)

    rollouts = [rollout(0, "fine"), rollout(1, "a BAD one")]
    reward = load_reward("py:test_rewards:fails_on_bad")
    with pytest.raises(RewardError, match="prompt 1.*a BAD one"):
        score_rollouts(rollouts, reward, "py:test_rewards:fails_on_bad",
                       JsonlStore(tmp_path / "r.jsonl", Rollout), progress=False)


# --------------------------------------------------------------------------- end to end

PROMPTS = [{"messages": [{"role": "user", "content": "Say something nice about Mondays."}]},
           {"prompt": "Once upon a time"},
           {"messages": [{"role": "user", "content": "How was your day?"}]}]


def tiny_config(tmp_path, upstream, **kw) -> TrainConfig:
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    base = dict(prompts=str(prompts), reward="vader", out=str(tmp_path / "run"),
                upstream=upstream.base_url, model=upstream.model,
                chat_template=str(smollm2_gguf()), backbone="tiny", samples_per_prompt=2,
                max_tokens=6, epochs=1, min_steps=0, lora_r=4, batch_size=2,
                heldout_frac=0.34, val_completions=2, save_every=2, quiet=True)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tiny_run(upstream, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    cfg = tiny_config(tmp, upstream)
    summary = asyncio.run(run(cfg))
    return cfg, summary


def test_min_steps_trains_more_epochs_than_asked_on_few_rollouts(upstream, tmp_path):
    """4 training rollouts at batch 2 are 2 steps an epoch: --epochs 1 with --min-steps 5
    trains 3 epochs (6 steps), validating after each."""
    cfg = tiny_config(tmp_path, upstream, min_steps=5, save_every=0)
    summary = asyncio.run(run(cfg))
    assert summary["steps"] == 6
    vals = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text()
            .splitlines() if json.loads(line)["kind"] == "validation"]
    assert [v["epoch"] for v in vals] == [0, 1, 2, 3]


def test_tiny_end_to_end_run_yields_a_loadable_trained_checkpoint(tiny_run):
    from vas_proxy.train.backbone import build_model
    from vas_proxy.train.validation import predict_last
    from vas_proxy.values.loader import load_value
    from vas_proxy.values.store import read_checkpoint_config

    cfg, summary = tiny_run
    out = Path(cfg.out)
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 6
    first = rollouts[0]
    assert {"prompt", "upstream_prompt", "response", "rewards", "tokens", "logprobs",
            "seed"} <= set(first)
    assert first["upstream_prompt"].endswith("<|im_start|>assistant\n")
    assert len(first["logprobs"]) == len(first["tokens"]) <= 6
    assert "vader" in first["rewards"]

    config = read_checkpoint_config(out)
    assert config["metadata"]["reward"] == "vader"
    assert config["metadata"]["step"] == summary["steps"] > 0
    assert config["metadata"]["args"]["lora_r"] == 4
    assert (out / "checkpoints" / "step-000002" / "vas_value.json").is_file()
    # the verdict: judged from the last validation, saved with the model, returned
    verdict = config["metadata"]["verdict"]
    assert verdict == summary["verdict"] and verdict["label"] in ("guides", "weak",
                                                                  "no better than the mean")
    assert verdict["quality"].startswith("half-responses (n=2): MSE ")
    assert any("rest on 2 responses" in c for c in verdict["causes"])
    assert (out / "curves.png").stat().st_size > 1000
    kinds = [json.loads(line)["kind"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("validation") == 2 and "train" in kinds
    from vas_proxy.train.report import heldout_corrs  # the verdict's trend: epoch 1's, not 0's
    assert len(heldout_corrs(out / "metrics.jsonl")) == 1

    value = load_value(str(out), name="tiny")
    texts = [" wonderful", " awful", " the"]
    trained = value.score("Hello", " it is", texts)
    fresh, tok = build_model(cfg)  # the same initialisation, untrained: zero head
    before = predict_last(fresh, tok, ["Hello it is" + t for t in texts])
    assert before == [0.0, 0.0, 0.0]
    assert any(abs(v) > 1e-4 for v in trained)


def test_resume_continues_steps_and_optimiser_without_resampling(tiny_run, tmp_path):
    import shutil

    cfg, summary = tiny_run
    out = tmp_path / "run"
    shutil.copytree(cfg.out, out)
    steps = summary["steps"]
    rollouts_before = (out / "rollouts.jsonl").read_text()

    # An unreachable upstream proves that every rollout and validation sample is reused.
    dead = type("Dead", (), {"base_url": "http://127.0.0.1:9/v1", "model": cfg.model})()
    again = tiny_config(Path(cfg.prompts).parent, dead, out=str(out), epochs=2)
    with pytest.raises(ConfigError, match="already holds a training run"):
        asyncio.run(run(again))
    again.resume = True
    resumed = asyncio.run(run(again))

    assert resumed["steps"] == 2 * steps
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["progress"]["step"] == 2 * steps
    # AdamW counts its own steps: restored, it went on from `steps` instead of restarting at 0
    assert all(float(s["step"]) == 2 * steps for s in state["optimizer"]["state"].values())
    train_steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text()
                                          .splitlines()) if r["kind"] == "train"]
    assert train_steps == list(range(1, 2 * steps + 1))
    assert (out / "rollouts.jsonl").read_text() == rollouts_before


@pytest.mark.parametrize("change, legacy, said", [
    ({"rare_weight": 0.5}, False, "--rare-weight 0.0 (now 0.5)"),
    ({"lam": 0.5, "consistency_k": 4}, False, "--consistency-k 6 (now 4), --lambda 0.95 (now 0.5)"),
    # a state saved before these options existed: the defaults it was trained at stand in
    ({"rare_weight": 0.5}, True, "--rare-weight 0.0 (now 0.5)"),
    ({}, True, "--lora-layers 0 (now 8)"),  # then a missing lora_layers meant all layers
    ({"residual": True}, True, "--residual False (now True)"),
])
def test_resume_refuses_a_changed_fit_and_keeps_the_state(tiny_run, tmp_path, change, legacy,
                                                          said):
    import shutil

    cfg, _ = tiny_run
    out = tmp_path / "run"
    shutil.copytree(cfg.out, out)
    path = out / "train_state.pt"
    if legacy:
        state = torch.load(path, weights_only=True)
        for key in ("lora_layers", "rare_weight", "consistency", "consistency_k",
                    "consistency_states", "branches", "branch_k", "gamma", "lam", "residual"):
            del state[key]
        torch.save(state, path)
    before, run_file = path.read_bytes(), (out / "run.json").read_bytes()
    dead = type("Dead", (), {"base_url": "http://127.0.0.1:9/v1", "model": cfg.model})()
    again = tiny_config(Path(cfg.prompts).parent, dead, out=str(out), epochs=2, resume=True,
                        **({"lora_layers": 8} if legacy and not change else change))
    with pytest.raises(ConfigError) as err:
        asyncio.run(run(again))
    assert said in err.value.message and "another --out" in err.value.message
    assert path.read_bytes() == before and (out / "run.json").read_bytes() == run_file


def test_rollouts_are_reproducible_from_their_seed(tiny_run, upstream):
    from vas_proxy.train.prompts import PromptItem
    from vas_proxy.train.rollouts import sample_rollouts
    from vas_proxy.upstream.client import UpstreamClient

    cfg, _ = tiny_run
    # Rollouts are stored as they finish; take one that is sample 0 of its prompt.
    stored = next(r for r in map(json.loads, (Path(cfg.out) / "rollouts.jsonl").read_text()
                                 .splitlines()) if r["sample"] == 0)

    async def resample(tmp, top_k=1):
        client = UpstreamClient(upstream.base_url, upstream.model, use_cache=False)
        try:
            item = PromptItem(stored["prompt_index"], stored["prompt"], stored["upstream_prompt"])
            return await sample_rollouts(client, [item], samples=1, max_tokens=cfg.max_tokens,
                                         seed=cfg.seed, stop=["<|im_end|>"],
                                         store=JsonlStore(tmp, Rollout), progress=False,
                                         top_k=top_k)
        finally:
            await client.aclose()

    again = asyncio.run(resample(Path(cfg.out).parent / "again.jsonl"))
    assert again[0].response == stored["response"]
    assert again[0].seed == stored["seed"]
    # --no-logprobs: the same sample, stored without tokens; its half is cut by characters
    text_only = asyncio.run(resample(Path(cfg.out).parent / "text_only.jsonl", top_k=0))
    assert text_only[0].response == stored["response"]
    assert text_only[0].tokens == text_only[0].logprobs == []
    r = text_only[0].response
    assert text_only[0].half() == (r[:len(r) // 2], cfg.max_tokens // 2)
    # --consistency's rollouts: the same sample again, with each position's top-k stored
    with_top = asyncio.run(resample(Path(cfg.out).parent / "top.jsonl", top_k=4))[0]
    assert with_top.response == stored["response"] and with_top.tokens == again[0].tokens
    assert len(with_top.top) == len(with_top.tokens)
    assert all(1 <= len(cands) <= 4 for cands in with_top.top)
    assert sum(tok in (text for text, _ in cands)
               for tok, cands in zip(with_top.tokens, with_top.top)) >= len(with_top.tokens) // 2
    assert all(lp <= 0 for cands in with_top.top for _, lp in cands)


# --------------------------------------------------------------------------- CLI errors

def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    return subprocess.run([sys.executable, "-m", "vas_proxy", "train", *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def assert_one_line_error(res, fragment):
    assert res.returncode == 1, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert fragment in lines[0] and "Traceback" not in res.stderr


@pytest.fixture
def good_prompts(tmp_path):
    f = tmp_path / "prompts.jsonl"
    f.write_text('{"prompt": "hi"}\n')
    return f


def test_cli_bad_prompts_file(tmp_path):
    assert_one_line_error(cli("--prompts", str(tmp_path / "nope.jsonl"), "--reward", "vader",
                              "--out", str(tmp_path / "o")), "does not exist")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\nnot json\n')
    assert_one_line_error(cli("--prompts", str(bad), "--reward", "vader",
                              "--out", str(tmp_path / "o")), "line 2: bad JSON")
    bad.write_text('{"question": "no"}\n')
    assert_one_line_error(cli("--prompts", str(bad), "--reward", "vader",
                              "--out", str(tmp_path / "o")), "\"prompt\" (text) or")


def test_cli_bad_reward_spec(tmp_path, good_prompts):
    assert_one_line_error(cli("--prompts", str(good_prompts), "--reward", "sentimentality",
                              "--out", str(tmp_path / "o")), "unknown reward spec")
    assert_one_line_error(cli("--prompts", str(good_prompts), "--reward", "py:no_such_mod:f",
                              "--out", str(tmp_path / "o")), "cannot import module")


def test_cli_unwritable_out_dir(tmp_path, good_prompts):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_one_line_error(cli("--prompts", str(good_prompts), "--reward", "vader",
                              "--out", str(blocker / "run")), "cannot write to --out")


def test_embedded_upstream_is_recycled_between_requests(tmp_path):
    """llama-cpp-python (whose memory grows per request) is restarted every `recycle_every`
    requests, never mid-request; llama-server is not."""
    import contextlib

    from vas_proxy.train.collect import LazyUpstream

    events = []

    class FakeLocal:
        server = "llama-cpp-python"

        def stop(self):
            events.append("stop")

        def start(self):
            events.append("start")

    class FakeClient:
        async def complete(self, prompt, **kw):
            events.append(f"begin {prompt}")
            await asyncio.sleep(0.01 * (prompt % 3))
            events.append(f"end {prompt}")
            return prompt

    async def go():
        async with contextlib.AsyncExitStack() as stack:
            up = LazyUpstream(TrainConfig(prompts="-", reward="vader", out=str(tmp_path)),
                              None, stack, recycle_every=3)
            up._local, up._client = FakeLocal(), FakeClient()
            two = asyncio.Semaphore(2)  # the samplers' concurrency

            async def one(i):
                async with two:
                    return await up.complete(i)

            return await asyncio.gather(*[one(i) for i in range(9)])

    assert asyncio.run(go()) == list(range(9))
    assert events.count("stop") == events.count("start") >= 2
    in_flight = served = 0
    for e in events:  # no request runs while the server restarts, and few run between
        in_flight += e.startswith("begin") - e.startswith("end")
        served += e.startswith("end")
        if e in ("stop", "start"):
            assert in_flight == 0
        if e == "stop":
            assert 3 <= served <= 4
            served = 0
    events.clear()
    FakeLocal.server = "llama-server"
    assert asyncio.run(go()) == list(range(9)) and "stop" not in events


def test_training_starts_from_the_mean_reward(tmp_path):
    """Without --standardize: head weights zero, bias = mean training reward, so the untrained
    model is the mean predictor, whatever the reward's offset (-1.5 for `plain`)."""
    from vas_proxy.train.backbone import build_model
    from vas_proxy.train.td import Example
    from vas_proxy.train.trainer import Trainer
    from vas_proxy.train.validation import predict_last

    cfg = TrainConfig(prompts="-", reward="plain", out=str(tmp_path), backbone="tiny",
                      lora_r=4, standardize=False, quiet=True)
    model, tok = build_model(cfg)
    ids = tok("Hello there")["input_ids"]
    examples = [Example(ids, 1, r) for r in (-1.0, -2.0, -0.5, -2.5)]
    Trainer(cfg, model, tok, examples, tmp_path)
    assert predict_last(model, tok, ["Hello it is", "Nope"]) == pytest.approx([-1.5, -1.5])


def test_standardize_fits_z_scores_and_saves_and_validates_in_reward_units(tmp_path):
    """--standardize trains on (r - mean) / sd; the checkpoint and the validation see reward
    units (V = sd·z + mean), and the head goes back to z-units for training."""
    from vas_proxy.train.backbone import build_model
    from vas_proxy.train.td import Example
    from vas_proxy.train.trainer import Trainer
    from vas_proxy.train.validation import predict_last
    from vas_proxy.values.loader import load_value

    rewards = (-1.0, -2.0, -0.5, -2.5)
    cfg = TrainConfig(prompts="-", reward="plain", out=str(tmp_path), backbone="tiny", lora_r=4,
                      epochs=1, min_steps=0, batch_size=2, standardize=True, quiet=True)
    model, tok = build_model(cfg)
    examples = [Example(tok(t)["input_ids"], 1, r) for t, r in
                zip(["Hello there", "Bye now", "So it goes", "Well well"], rewards)]
    seen = []
    trainer = Trainer(cfg, model, tok, examples, tmp_path,
                      evaluate=lambda m: seen.append(predict_last(m, tok, ["Hello there"])) or {})
    mean, sd = float(np.mean(rewards)), float(np.std(rewards))
    assert (trainer.target_mean, trainer.target_sd) == pytest.approx((mean, sd))
    assert [e.reward for e in trainer.examples] == pytest.approx([(r - mean) / sd
                                                                  for r in rewards])
    assert predict_last(model, tok, ["Hello there"]) == pytest.approx([0.0])  # z: the mean
    trainer.train()
    z = predict_last(model, tok, ["Hello there"])[0]  # the head is back in z-units
    assert seen[-1][0] == pytest.approx(sd * z + mean, abs=1e-5)
    assert seen[0][0] == pytest.approx(mean)  # the untrained validation: the mean predictor
    saved = load_value(str(tmp_path), name="z").score("Hello", " there", [""])
    assert abs(saved[0] - seen[-1][0]) < 0.05  # "Hello" + " there" + "": the same text


def test_embedded_llama_server_rollouts_do_not_depend_on_its_slots(tmp_path):
    """Without --upstream, train samples from the embedded default (llama-server where built,
    as CI builds it) with one slot per request in flight; the seeds alone decide the samples,
    so 1 slot and 3 slots give the same rollouts."""
    from vas_proxy.upstream.local import default_server

    assert default_server() == "llama-server"
    texts = []
    for slots in (1, 3):
        cfg = tiny_config(tmp_path, type("U", (), {"base_url": None, "model": None})(),
                          out=str(tmp_path / f"run{slots}"), concurrency=slots, epochs=0,
                          val_completions=0, max_tokens=8, samples_per_prompt=2)
        summary = asyncio.run(run(cfg))
        assert summary["steps"] == 0 and summary["verdict"] is None  # --epochs 0: samples only
        assert not (Path(cfg.out) / "vas_value.json").exists()
        rollouts = [json.loads(line) for line in
                    (Path(cfg.out) / "rollouts.jsonl").read_text().splitlines()]
        texts.append(sorted((r["prompt_index"], r["sample"], r["response"]) for r in rollouts))
    assert len(texts[0]) == 6 and texts[0] == texts[1]
    assert len({t[2] for t in texts[0]}) > 1  # real, varied samples


def test_extra_rollouts_from_an_eval_are_trained_on_except_held_out_prompts(tiny_run, upstream,
                                                                            tmp_path):
    """An on-policy round's data: the responses of a `vas-proxy eval` results.jsonl on the same
    prompts join the training set (scored, kept beside the run), held-out prompts' left out."""
    import shutil

    from vas_proxy.errors import ConfigError
    from vas_proxy.train.collect import heldout_prompts
    from vas_proxy.values.store import read_checkpoint_config

    cfg, _ = tiny_run
    out = tmp_path / "round2"
    out.mkdir()
    for name in ("rollouts.jsonl", "validation.jsonl"):
        shutil.copy(Path(cfg.out) / name, out / name)
    base = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    prompt_of = {r["prompt_index"]: r["prompt"] for r in base}
    records = [{"setting": "vas b=2 v=1", "prompt_index": i, "prompt": prompt_of[i], "seed": i,
                "response": f" what a lovely answer number {i}", "finish_reason": "length",
                "tokens": 6, "rewards": {}} for i in range(3) for _ in range(2)]
    records[0]["rewards"] = {"vader": 0.123}  # computed by the eval already: kept
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = asyncio.run(run(tiny_config(tmp_path, upstream, out=str(out),
                                          extra_rollouts=str(results))))
    held = heldout_prompts(3, cfg.heldout_frac, cfg.seed)
    used = sum(r["prompt_index"] not in held for r in records)
    n_base = sum(r["prompt_index"] not in held for r in base)
    meta = read_checkpoint_config(out)["metadata"]
    assert summary["steps"] > 0 and meta["train_rollouts"] == n_base + used
    extra = [json.loads(line) for line in (out / "extra_rollouts.jsonl").read_text().splitlines()]
    assert len(extra) == 6 and extra[0]["rewards"]["vader"] == 0.123
    assert all(isinstance(r["rewards"]["vader"], float) for r in extra)
    assert {r["upstream_prompt"] for r in extra} <= {r["upstream_prompt"] for r in base}

    records[3]["prompt"] = "another prompt file's prompt"
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ConfigError, match=r"results.jsonl:4: prompt 1 is not this run's"):
        asyncio.run(run(tiny_config(tmp_path, upstream, out=str(tmp_path / "r3"),
                                    extra_rollouts=str(results))))
    with pytest.raises(ConfigError, match="--extra-rollouts .*no such file"):
        asyncio.run(run(tiny_config(tmp_path, upstream, out=str(tmp_path / "r4"),
                                    extra_rollouts=str(tmp_path / "missing.jsonl"))))
