"""The RL baselines (`vas-proxy baseline rl`): pairs and mixtures, real TRL runs (DPO, GRPO) on
the embedded SmolLM2, llama.cpp's adapter conversion checked against transformers on the real
llama-server, and tuned models in `vas-proxy eval`."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from vas_proxy.baseline import command as baseline_command
from vas_proxy.baseline.config import BaselineConfig
from vas_proxy.baseline.data import (
    mixture,
    preference_pairs,
    score_rollouts,
    tokenize_pair,
)
from vas_proxy.baseline.export import ADAPTER_GGUF, read_meta, to_gguf, write_meta
from vas_proxy.baseline.policy import load_policy, load_tokenizer, lora_config
from vas_proxy.baseline.scorer import TunedScorer
from vas_proxy.cli import main
from vas_proxy.errors import ConfigError
from vas_proxy.rewards import load_reward
from vas_proxy.train.rollouts import ROLLOUTS_FILE, Rollout

GOOD = ["I love this, it is wonderful and great fun!", "What a lovely, happy day.",
        "Thank you, this is excellent and delightful.", "Great news, I am so glad!"]
BAD = ["This is terrible, awful and sad.", "I hate it; everything is horrible.",
       "What a miserable, painful failure.", "Bad, ugly and disgusting."]
QUESTIONS = ["How was your day?", "What do you think of the movie?", "Tell me about lunch.",
             "How is the weather?"]


def _rollout(chat_prompt, p: int, j: int, text: str, stop: bool) -> Rollout:
    return Rollout(prompt_index=p, sample=j, seed=p * 10 + j, model="m", max_tokens=16,
                   prompt=QUESTIONS[p], upstream_prompt=chat_prompt(QUESTIONS[p]),
                   response=text, finish_reason="stop" if stop else "length")


@pytest.fixture(scope="module")
def rollouts_dir(tmp_path_factory, chat_template):
    """A `train` run directory: 4 prompts, a clearly positive and a clearly negative answer."""
    def render(text):
        return chat_template.render([{"role": "user", "content": text}])
    d = tmp_path_factory.mktemp("rollouts")
    rows = [_rollout(render, p, j, (GOOD if j == 0 else BAD)[p], stop=(p % 2 == 0))
            for p in range(4) for j in range(2)]
    (d / ROLLOUTS_FILE).write_text("".join(json.dumps(asdict(r)) + "\n" for r in rows))
    return d


# --------------------------------------------------------------------------- data


def test_pairs_take_best_and_worst_and_skip_ties(chat_prompt):
    rs = [_rollout(chat_prompt, 0, j, t, stop=j == 2) for j, t in enumerate(["a", "b", "c"])]
    rs += [_rollout(chat_prompt, 1, j, t, stop=False) for j, t in enumerate(["d", "e"])]
    pairs = preference_pairs(rs, np.array([0.1, -0.5, 0.9, 0.3, 0.3]))
    assert len(pairs) == 1  # prompt 1 ties: no preference
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("c", "b")
    assert pairs[0]["chosen_stop"] and not pairs[0]["rejected_stop"]
    assert pairs[0]["margin"] == pytest.approx(1.4)
    with pytest.raises(ConfigError, match="no preference pairs"):
        preference_pairs(rs[3:], np.array([0.3, 0.3]))


def test_mixture_weighs_rewards_in_units_of_their_sd():
    scores = {"a": [0.0, 2.0, 4.0, 6.0], "b": [0.0, 0.1, 0.2, 0.3]}
    mix = mixture({"a": "x", "b": "y"}, {"a": 0.5, "b": 0.5}, scores)
    # b moves 1/20 of a's range but weighs the same once scaled: the two cancel when opposed
    combined = mix.combine({"a": [0.0, 6.0], "b": [0.3, 0.0]})
    assert combined[0] == pytest.approx(combined[1])
    with pytest.raises(ConfigError, match="unknown reward"):
        mixture({"a": "x"}, {"c": 1.0}, {"a": [0.0, 1.0]})
    assert mixture({"a": "x"}, None, {"a": [1.0, 1.0]}).scale == {"a": 1.0}  # constant reward


def test_score_rollouts_reuses_stored_scores_of_the_same_spec(chat_prompt):
    rs = [_rollout(chat_prompt, 0, 0, "great", True), _rollout(chat_prompt, 0, 1, "bad", True)]
    for r, v in zip(rs, (7.0, 8.0)):
        r.rewards["vader"] = v  # not what vader says: shows the stored value is used
    scores = score_rollouts(rs, {"v": load_reward("vader"), "p": load_reward("plain")},
                            {"v": "vader", "p": "plain"})
    assert scores["v"] == [7.0, 8.0]
    assert scores["p"] == list(load_reward("plain")([r.prompt for r in rs],
                                                    [r.response for r in rs]))


def test_end_of_turn_is_appended_only_to_responses_that_stopped(chat_prompt):
    tok = load_tokenizer()
    pair = {"prompt": chat_prompt("Hi"), "chosen": "Hello there", "rejected": "Go away",
            "chosen_stop": True, "rejected_stop": False}
    ids = tokenize_pair(tok, pair)
    assert ids["prompt_ids"] == tok(chat_prompt("Hi"), add_special_tokens=False)["input_ids"]
    assert ids["chosen_ids"][-1] == tok.eos_token_id
    assert tok.eos_token_id not in ids["rejected_ids"]
    assert tok.decode(ids["rejected_ids"]) == "Go away"


# --------------------------------------------------------------------------- config and CLI


@pytest.mark.parametrize("changes, message", [
    ({"method": "ppo"}, "--method must be one of"),
    ({"rollouts": None}, "needs --rollouts"),
    ({"beta": 0.0}, "--beta 0 is not DPO"),
    ({"method": "grpo", "generations": 1}, "--generations must be >= 2"),
    ({"rewards": {}}, "--reward is required"),
])
def test_config_errors_are_clear(tmp_path, changes, message):
    cfg = BaselineConfig(**{"method": "dpo", "rewards": {"vader": "vader"},
                            "out": str(tmp_path), "rollouts": str(tmp_path), **changes})
    with pytest.raises(ConfigError, match=message):
        baseline_command.run(cfg)


def test_cli_reports_a_missing_rollouts_file(tmp_path, capsys):
    rc = main(["baseline", "rl", "--method", "dpo", "--reward", "vader", "--rollouts",
               str(tmp_path), "--out", str(tmp_path / "out"), "-q"])
    assert rc == 1
    assert "no rollouts.jsonl there" in capsys.readouterr().err


def test_resolved_config_fills_the_methods_defaults():
    from vas_proxy import defaults

    dpo = BaselineConfig(method="dpo", rewards={"v": "vader"}, out="o").resolved()
    grpo = BaselineConfig(method="grpo", rewards={"v": "vader"}, out="o").resolved()
    assert (dpo.beta, grpo.beta, dpo.lr) == (defaults.DPO_BETA, defaults.GRPO_BETA,
                                             defaults.RL_LR)
    assert BaselineConfig(method="dpo", rewards={"v": "vader"}, out="o",
                          beta=0.3).resolved().beta == 0.3


# --------------------------------------------------------------------------- real runs


def _dpo_cfg(rollouts_dir, out, **kw) -> BaselineConfig:
    base = dict(method="dpo", rewards={"vader": "vader"}, rollouts=str(rollouts_dir),
                out=str(out), epochs=4, batch_size=2, lr=3e-3, lora_r=4, lora_layers=2,
                warmup=0, save_every=2, quiet=True)
    return BaselineConfig(**{**base, **kw})


def test_dpo_learns_the_preference_and_writes_a_servable_model(rollouts_dir, tmp_path):
    out = baseline_command.run(_dpo_cfg(rollouts_dir, tmp_path / "dpo"))
    meta = read_meta(out)
    assert meta["method"] == "dpo" and meta["beta"] == pytest.approx(0.1)
    assert meta["cost"]["pairs"] == 4 and meta["cost"]["base_rollouts"] == 8
    assert meta["cost"]["steps"] == 8 and meta["cost"]["train_seconds"] > 0
    assert (out / ADAPTER_GGUF).stat().st_size > 0 and (out / "curves.png").is_file()
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in m for m in metrics)
    # What DPO optimises, measured with the weights: the tuned model raises the chosen
    # answers' likelihood relative to the rejected ones, against the base, on every pair.
    scorer = TunedScorer(out / "adapter")
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    def ratio(prompt, text):
        return (scorer.loglik(prompt, text, tuned=True)[0]
                - scorer.loglik(prompt, text, tuned=False)[0])

    for p in pairs:
        assert ratio(p["prompt"], p["chosen"]) - ratio(p["prompt"], p["rejected"]) > 0.5
    # done: a rerun without --resume refuses, with it returns at once
    with pytest.raises(ConfigError, match="already holds a tuned model"):
        baseline_command.run(_dpo_cfg(rollouts_dir, out))
    assert baseline_command.run(_dpo_cfg(rollouts_dir, out, resume=True)) == out


def test_dpo_resumes_from_its_last_checkpoint(rollouts_dir, tmp_path):
    out = tmp_path / "dpo"
    baseline_command.run(_dpo_cfg(rollouts_dir, out, epochs=1))
    # a run that died after training, before its conversion: the checkpoint is what is left
    (out / ADAPTER_GGUF).unlink()
    (out / "baseline.json").unlink()
    with pytest.raises(ConfigError, match="pass --resume"):
        baseline_command.run(_dpo_cfg(rollouts_dir, out, epochs=2))
    baseline_command.run(_dpo_cfg(rollouts_dir, out, epochs=2, resume=True))
    meta = read_meta(out)
    assert meta["cost"]["steps"] == 4
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert sorted(set(steps)) == [1, 2, 3, 4]  # steps 1-2 from the first run, 3-4 resumed


def test_grpo_runs_online_on_the_reward(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}]})
                               + "\n" for q in QUESTIONS[:2]))
    cfg = BaselineConfig(method="grpo", rewards={"vader": "vader"}, prompts=str(prompts),
                         out=str(tmp_path / "grpo"), steps=2, generations=2,
                         prompts_per_step=1, max_tokens=6, lora_r=2, lora_layers=1,
                         warmup=0, quiet=True)
    out = baseline_command.run(cfg)
    meta = read_meta(out)
    assert meta["method"] == "grpo" and meta["cost"]["policy_samples"] == 4
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("reward" in m for m in metrics)


# --------------------------------------------------------------------------- served adapters


@pytest.fixture(scope="module")
def strong_adapter(tmp_path_factory):
    """A LoRA adapter far from zero on every projection of the top 4 layers (q and k included,
    whose rows llama.cpp permutes): the served model must match transformers' exactly there."""
    from peft import get_peft_model

    torch.manual_seed(0)
    model = load_policy()
    cfg = lora_config(model, r=4, layers=4)
    cfg.init_lora_weights = False  # random A and B: the adapter changes the model at once
    peft = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.mul_(1.0)
    out = tmp_path_factory.mktemp("tuned")
    peft.save_pretrained(str(out / "adapter"))
    to_gguf(out / "adapter", model.config, out / ADAPTER_GGUF)
    write_meta(out, {"method": "test", "beta": 0.0, "rewards": {}, "cost": {}})
    return out


def test_served_adapter_matches_transformers(strong_adapter, chat_prompt):
    from vas_proxy.upstream.client import UpstreamClient
    from vas_proxy.upstream.local import LocalUpstream

    prompt = chat_prompt("Tell me about your favourite food.")

    async def served_top(lora):
        with LocalUpstream(server="llama-server", lora=lora) as up:
            async with UpstreamClient(up.base_url, up.model, use_cache=False) as client:
                res = await client.complete(prompt, max_tokens=1, top_k=8, seed=0)
        return {c.id: c.logprob for c in res.positions[0].candidates}

    tuned_served = asyncio.run(served_top(strong_adapter / ADAPTER_GGUF))
    base_served = asyncio.run(served_top(None))
    scorer = TunedScorer(strong_adapter / "adapter")
    ids = scorer.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    lq = scorer._logprobs(ids + [0], len(ids), tuned=True)[0]
    lp = scorer._logprobs(ids + [0], len(ids), tuned=False)[0]
    # the served tuned model agrees with transformers' tuned model (quantized arithmetic:
    # within 0.3 nat on its top candidates) ...
    gaps = {tid: abs(logprob - float(lq[tid])) for tid, logprob in tuned_served.items()}
    print("served vs transformers, tuned:", {k: round(v, 3) for k, v in gaps.items()},
          "shift from base:", {t: round(float(lq[t] - lp[t]), 3) for t in tuned_served})
    assert max(gaps.values()) < 0.3
    # ... and the adapter really moved it: its top candidates are not the base's
    assert set(tuned_served) != set(base_served)
    assert max(abs(float(lq[t]) - float(lp[t])) for t in tuned_served) > 1.0


def test_eval_puts_a_tuned_model_in_the_same_table(strong_adapter, tmp_path):
    from vas_proxy.eval.config import EvalConfig
    from vas_proxy.eval.harness import run

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}]})
                               + "\n" for q in QUESTIONS[:2]))
    cfg = EvalConfig(prompts=str(prompts), rewards={"vader": "vader"}, out=str(tmp_path / "e"),
                     betas=[0.0], best_of=[], tuned={"strong": str(strong_adapter)},
                     max_tokens=6, embedded="llama-server", quiet=True)
    out = asyncio.run(run(cfg))
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    tuned = [r for r in recs if r["setting"] == "tuned strong"]
    base = [r for r in recs if r["setting"] == "base"]
    assert len(tuned) == len(base) == 2
    assert all(r["kl_kind"] == "exact" and r["kl"] > 0.5 for r in tuned)
    assert all(r["upstream_calls"] >= 1 for r in tuned)
    summary = (out / "summary.csv").read_text()
    assert "tuned strong" in summary
    # a finished directory resumes without sampling again; a wrong --tuned fails first
    with pytest.raises(ConfigError, match="not a tuned model"):
        asyncio.run(run(EvalConfig(**{**asdict(cfg), "resume": True,
                                      "tuned": {"x": str(tmp_path)}})))


def test_adapter_needs_the_embedded_upstream():
    from vas_proxy.options import UpstreamOptions
    from vas_proxy.runtime import Options, open_runtime

    async def go():
        opts = Options(upstream=UpstreamOptions(url="http://127.0.0.1:9/v1", adapter="x.gguf"))
        async with open_runtime(opts):
            pass

    with pytest.raises(ConfigError, match="embedded upstream only"):
        asyncio.run(go())


def test_missing_adapter_file_is_a_clear_error(tmp_path):
    from vas_proxy.upstream.local import LocalUpstream

    with pytest.raises(ConfigError, match="does not exist"):
        LocalUpstream(server="llama-server", lora=tmp_path / "none.gguf").start()


def test_read_meta_rejects_what_is_not_a_finished_tuned_model(tmp_path):
    with pytest.raises(ConfigError, match="not a tuned model"):
        read_meta(tmp_path)
    write_meta(tmp_path, {"method": "dpo"})
    with pytest.raises(ConfigError, match="did not finish"):
        read_meta(tmp_path)
    Path(tmp_path / "baseline.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ConfigError, match="is not a vas_baseline"):
        read_meta(tmp_path)
