"""Evaluation: the KL estimator, linear composition of value models end to end, backbone
sharing, and `vas-proxy eval` writing every artefact (real upstream, tiny settings)."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import tempfile
from pathlib import Path

import httpx2 as httpx
import numpy as np
import openai
import pytest
import torch

import vas_proxy
from vas_proxy.bestofn import kl_bound
from vas_proxy.cli import main
from vas_proxy.engine import Engine, GenerationRequest
from vas_proxy.guidance import Guidance
from vas_proxy.eval.config import EvalConfig, parse_weights
from vas_proxy.eval.report import write_report
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.upstream.retry import RetryPolicy
from vas_proxy.values.callable import CallableValue

from valuefns import char_hash

# ---------------------------------------------------------------- KL on a constructed case

TOKENS = {"a": math.log(0.5), "b": math.log(0.3), "c": math.log(0.2)}
VALUES = {"a": 1.0, "b": 0.0, "c": -1.0}


def _fixed_upstream(request: httpx.Request) -> httpx.Response:
    """Every position offers the same three tokens with p = (0.5, 0.3, 0.2)."""
    return httpx.Response(200, json={
        "choices": [{"text": "a", "index": 0, "finish_reason": "length",
                     "logprobs": {"tokens": ["a"], "token_logprobs": [TOKENS["a"]],
                                  "top_logprobs": [dict(TOKENS)]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1}})


def test_kl_estimate_matches_the_analytic_kl():
    beta, steps = 1.5, 300
    p = np.array([0.5, 0.3, 0.2])
    q = p * np.exp(beta * np.array([1.0, 0.0, -1.0]))
    q /= q.sum()
    analytic = float(np.sum(q * np.log(q / p)))  # KL(q‖p) per token
    value = CallableValue(lambda prompt, cs: [VALUES[c[-1]] for c in cs], "v")
    client = UpstreamClient("http://fake/v1", "m", use_cache=False, retry=RetryPolicy.none(),
                            transport=httpx.MockTransport(_fixed_upstream))
    engine = Engine(client, {"v": value}, defaults=Guidance(beta=beta, top_k=3, trace=True,
                                                            speculate=0))

    async def go():
        return [await engine.generate(GenerationRequest("x", max_tokens=steps, seed=s,
                                                        guidance=engine.defaults))
                for s in range(6)]

    gens = asyncio.run(go())
    per_token = []
    for g in gens:
        # each step's term is exactly log q − log p of the chosen token ...
        for ev, tr in zip(g.tokens, g.trace):
            i = [c["token"] for c in tr["candidates"]].index(tr["chosen"])
            assert ev.kl == pytest.approx(math.log(q[i] / p[i]), abs=1e-9)
            per_token.append(ev.kl)
        # ... and Generation.kl is their sum; path_kl (the eval's KL column) sums each
        # state's KL(q ‖ p) instead, here the same law at every state: exactly n × analytic
        assert g.kl == pytest.approx(sum(ev.kl for ev in g.tokens))
        assert g.path_kl == pytest.approx(len(g.tokens) * analytic, rel=1e-9)
    per_token = np.array(per_token)
    se = per_token.std(ddof=1) / math.sqrt(len(per_token))
    assert abs(per_token.mean() - analytic) < 4 * se  # unbiased: E_q[log q/p] = KL(q‖p)
    assert np.mean([g.kl for g in gens]) == pytest.approx(steps * analytic, rel=0.1)


def test_beta_zero_has_zero_kl_and_bon_bound():
    assert kl_bound(1) == 0.0 and kl_bound(16) == pytest.approx(math.log(16) - 15 / 16)
    client = UpstreamClient("http://fake/v1", "m", use_cache=False, retry=RetryPolicy.none(),
                            transport=httpx.MockTransport(_fixed_upstream))
    engine = Engine(client, {}, defaults=Guidance(beta=0.0, top_k=3))
    g = asyncio.run(engine.generate(GenerationRequest("x", max_tokens=20, seed=0,
                                                      guidance=engine.defaults)))
    assert g.kl == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------- weights compose linearly end to end

def short(prompt: str, continuations: list[str]) -> list[float]:
    return [-len(c) / 10 for c in continuations]


def test_weights_compose_linearly_end_to_end(upstream):
    """trace value = Σ w_i (V_i − mean V_i) over the candidates, negative weights included,
    and the target prob ∝ exp(logprob + beta·value)."""
    client = openai.OpenAI(base_url=upstream.base_url, api_key="sk", max_retries=0)
    g = vas_proxy.wrap(client, values={"h": "py:valuefns:char_hash",
                                       "short": "py:test_eval:short"}, beta=1.0)
    w = {"h": 0.7, "short": -1.3}
    r = g.completions.create(model=upstream.model, prompt="The weather today is", max_tokens=5,
                             seed=4, extra_body={"vas": {"beta": 0.8, "weights": w,
                                                         "trace": True}})
    trace = r.choices[0].model_extra["vas_trace"]
    assert trace
    response = ""
    for step in trace:
        cands = [c["token"] for c in step["candidates"]]
        conts = [response + c for c in cands]
        vh, vs = np.array(char_hash("", conts)), np.array(short("", conts))
        expected = w["h"] * (vh - vh.mean()) + w["short"] * (vs - vs.mean())
        got = np.array([c["value"] for c in step["candidates"]])
        np.testing.assert_allclose(got, expected, atol=1e-9)
        logits = np.array([c["logprob"] for c in step["candidates"]]) + 0.8 * got
        target = np.exp(logits - logits.max())
        np.testing.assert_allclose([c["prob"] for c in step["candidates"]],
                                   target / target.sum(), atol=1e-9)
        response += step["chosen"]


# --------------------------------------------------------------------- backbone sharing

@pytest.fixture(scope="module")
def two_lora_checkpoints():
    """Two LoRA value models (different adapters and heads) on one saved tiny backbone."""
    from torch import nn

    from vas_proxy.values.model import build_value_model, tiny_value_model
    from vas_proxy.values.store import save_checkpoint

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        model, tok = tiny_value_model(0)
        model.backbone.save_pretrained(str(root / "base"))
        tok.save_pretrained(str(root / "base"))
        paths = []
        with torch.random.fork_rng(devices=[]):
            for seed in (1, 2):
                torch.manual_seed(seed)
                m, t = build_value_model(str(root / "base"), lora_r=4)
                nn.init.normal_(m.head.weight, std=0.2)
                for name, param in m.backbone.named_parameters():
                    if "lora_B" in name:
                        nn.init.normal_(param, std=0.05)
                paths.append(save_checkpoint(m, t, root / f"v{seed}"))
        yield paths


def _unique_params(*models) -> int:
    return sum({p.data_ptr(): p.numel() for m in models for p in m.parameters()}.values())


def test_value_models_on_one_backbone_share_it(two_lora_checkpoints):
    from vas_proxy.runtime import load_values

    a_path, b_path = map(str, two_lora_checkpoints)
    shared = load_values({"a": a_path, "b": b_path}, verbose=False)
    alone = {"a": vas_proxy.values.loader.load_value(a_path),
             "b": vas_proxy.values.loader.load_value(b_path)}
    ma, mb = shared["a"].model, shared["b"].model
    assert ma.base_model is mb.base_model  # one backbone object in memory
    one = _unique_params(alone["a"].model)
    assert _unique_params(ma, mb) < 1.1 * one < _unique_params(alone["a"].model,
                                                                alone["b"].model)
    cands = [" good", " bad", " the", "!"]
    for _ in range(2):  # interleaved calls: each selects its own adapter
        for name in ("a", "b", "a"):
            assert shared[name].score("Hi there", " I am", cands) == pytest.approx(
                alone[name].score("Hi there", " I am", cands), abs=1e-4)
    assert shared["a"].score("Hi", "", cands) != pytest.approx(shared["b"].score("Hi", "",
                                                                                 cands))
    # a model alone on its backbone is loaded merged (the faster path), not through a pool
    lone = load_values({"a": a_path, "h": "py:valuefns:char_hash"}, verbose=False)["a"]
    assert lone.model.lora_config is None and lone.model.base_model is not ma.base_model


# ------------------------------------------------------------------------- the command

def test_eval_settings_and_parsing():
    cfg = EvalConfig(prompts="p", rewards={"vader": "vader"}, out="o",
                     values={"pos": "x", "plain": "y"}, betas=[0, 1, 2], best_of=[4, 1],
                     weights=[{"pos": 1, "plain": 0}, {"pos": 0.5, "plain": 0.5}])
    names = [s.name for s in cfg.settings()]
    assert names == ["base", "vas b=1 pos=1", "vas b=2 pos=1", "vas b=1 plain=0.5 pos=0.5",
                     "vas b=2 plain=0.5 pos=0.5", "bon N=1 vader", "bon N=4 vader"]
    assert parse_weights("a=1,b=-0.5") == {"a": 1.0, "b": -0.5}


def test_eval_flags_become_the_config():
    """The flags parse into EvalConfig by its own fields, whose names eval.json keeps."""
    from vas_proxy.cli import build_parser
    from vas_proxy.options import from_args

    a = build_parser().parse_args(
        ["eval", "--prompts", "p", "--reward", "vader", "--reward", "n=plain", "--out", "o",
         "--value", "h=py:valuefns:char_hash", "--beta", "0,1.5", "--best-of", "none",
         "--weights", "h=1", "--weights", "h=-0.5", "--limit", "3", "-q"])
    cfg = from_args(EvalConfig, a)
    assert (cfg.rewards, cfg.values) == ({"vader": "vader", "n": "plain"},
                                         {"h": "py:valuefns:char_hash"})
    assert (cfg.betas, cfg.best_of, cfg.weights) == ([0.0, 1.5], [], [{"h": 1.0}, {"h": -0.5}])
    assert (cfg.limit, cfg.quiet, cfg.timeout) == (3, True, 120.0)
    assert list(cfg.to_dict()) == [
        "prompts", "rewards", "out", "values", "betas", "best_of", "weights", "bon_reward",
        "pruned_best_of", "prune_block", "prune_keep", "guided_best_of", "guided_beta", "tuned",
        "prices", "max_tokens", "top_k", "speculate", "seed", "samples", "limit", "concurrency",
        "upstream", "model", "provider", "chat_template", "continuation", "embedded", "device",
        "dtype", "timeout", "resume", "quiet"]


def _eval_args(upstream, prompts, out, *extra):
    return ["eval", "--prompts", str(prompts),
            "--upstream", upstream.base_url,
            "--chat-template", str(vas_proxy.assets.smollm2_gguf()),
            "--reward", "vader", "--reward", "len=py:test_bestofn:length_reward",
            "--value", "h=py:valuefns:char_hash", "--value", "short=py:test_eval:short",
            "--max-tokens", "4", "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "two.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "Describe your morning."}]}\n'
                    '{"prompt": "The best thing about weekends is"}\n')
    return path


def test_eval_writes_every_artefact(upstream, prompts_file, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(_eval_args(upstream, prompts_file, out, "--beta", "0,1", "--best-of", "1,2",
                         "--weights", "h=1", "--weights", "h=0.5,short=0.5",
                         "--weights", "short=1", "--speculate", "-1"))
    assert rc == 0
    for name in ("results.jsonl", "summary.csv", "summary.md", "eval.json", "timings.json",
                 "reward_vs_kl.png", "reward_vs_cost.png", "composition.png"):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    settings = ["base", "vas b=1 h=1", "vas b=1 h=0.5 short=0.5", "vas b=1 short=1",
                "bon N=1 vader", "bon N=2 vader"]
    assert sorted({r["setting"] for r in records}) == sorted(settings)
    assert len(records) == 2 * len(settings)
    for r in records:
        assert set(r["rewards"]) == {"vader", "len"} and r["upstream_calls"] >= 1
        assert r["rewards"]["len"] == len(r["response"])
    rows = {r["setting"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert set(rows) == set(settings)
    row = rows["vas b=1 h=1"]
    for col in ("vader_mean", "vader_se", "len_mean", "len_se", "kl_mean", "kl_se",
                "upstream_calls", "billed_tokens", "upstream_prompt_tokens",
                "upstream_completion_tokens", "calls_per_token", "seconds", "wall_s"):
        assert col in row
    assert float(rows["base"]["kl_mean"]) == pytest.approx(0.0, abs=1e-9)
    assert float(rows["bon N=2 vader"]["kl_mean"]) == pytest.approx(kl_bound(2))
    assert float(rows["bon N=2 vader"]["upstream_calls"]) == 2
    # Best-of-1 and Best-of-2 come from one pool: Best-of-1 is its first sample
    by = {(r["setting"], r["prompt_index"]): r for r in records}
    for i in range(2):
        one, two = by["bon N=1 vader", i], by["bon N=2 vader", i]
        assert one["bon_scores"] == two["bon_scores"][:1] and two["bon_pool"] == 2
        assert one["calls"] == two["calls"][:1]
        if two["bon_chosen"] == 0:
            assert one["response"] == two["response"]
    assert float(row["kl_mean"]) > 0
    assert "| setting |" in (out / "summary.md").read_text()
    # the KL column is the path estimate where every record of a row has one, else the
    # chosen tokens' (directories written before kl_path was recorded)
    mine = [r for r in records if r["setting"] == "vas b=1 h=1"]
    assert all(r["kl_path"] > 0 for r in mine)
    assert float(row["kl_mean"]) == pytest.approx(np.mean([r["kl_path"] for r in mine]),
                                                  rel=1e-4)  # (the CSV keeps 6 digits)
    assert all(r["kl_path"] == pytest.approx(0.0, abs=1e-9)
               for r in records if r["setting"] == "base")
    del mine[0]["kl_path"]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_report(out, quiet=True)
    row = {r["setting"]: r for r in csv.DictReader((out / "summary.csv").open())}["vas b=1 h=1"]
    assert float(row["kl_mean"]) == pytest.approx(np.mean([r["kl"] for r in mine]), rel=1e-4)

    # resume adds only what is new; without --resume the directory is refused
    rc = main(_eval_args(upstream, prompts_file, out, "--beta", "0", "--best-of", "3",
                         "--resume"))
    assert rc == 0
    records = (out / "results.jsonl").read_text().splitlines()
    assert len(records) == 2 * (len(settings) + 1)
    saved = json.loads((out / "eval.json").read_text())  # every command that added is kept
    assert len(saved["commands"]) == 2 and saved["command"] == saved["commands"][-1]
    assert set(saved["values"]) == {"h", "short"}
    capsys.readouterr()
    assert main(_eval_args(upstream, prompts_file, out, "--beta", "0", "--best-of",
                           "none")) == 1
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--weights", "nope=1"], "unknown value model(s) nope"),
    (["--beta", "1,x"], "is not a number"),
    (["--bon-reward", "other"], "is not one of the rewards"),
])
def test_eval_errors_are_one_line(upstream, prompts_file, tmp_path, capsys, args, message):
    assert main(_eval_args(upstream, prompts_file, tmp_path / "e", *args)) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("error:") and "\n" not in err


def test_eval_runs_the_best_of_modes_and_prices_them(upstream, prompts_file, tmp_path):
    """Value-pruned Best-of-N and Best-of-N over VAS samples are eval settings of their own,
    and the report prices every setting under each table, with the latency plot."""
    out = tmp_path / "modes"
    rc = main(_eval_args(upstream, prompts_file, out, "--beta", "0,1", "--best-of", "2",
                         "--weights", "h=1", "--pruned-best-of", "2", "--prune-block", "2",
                         "--prune-keep", "0.5", "--guided-best-of", "2",
                         "--prices", "flat,out4-prefix"))
    assert rc == 0
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    by = {}
    for r in records:
        by.setdefault(r["setting"], []).append(r)
    pbon, gbon = by["pbon N=2 B=2 keep=0.5 h=1 vader"], by["gbon N=2 b=1 h=1 vader"]
    assert len(pbon) == len(gbon) == 2
    for r in pbon:
        assert r["method"] == "pbon" and r["kl"] is None and r["bon_details"]["mode"] == "pruned"
        assert r["bon_details"]["pruned"].count(True) <= 1 and len(r["calls"]) >= 2
    for r in gbon:
        assert r["method"] == "gbon" and r["beta"] == 1 and r["upstream_calls"] >= 2
        assert len(r["bon_kls"]) == 2 and r["kl_kind"] == "bound"
        assert r["kl"] == pytest.approx(kl_bound(2) + r["bon_kls"][r["bon_chosen"]])
    rows = {r["setting"]: r for r in csv.DictReader((out / "summary.csv").open())}
    for row in rows.values():
        flat, prefix = float(row["cost_flat_mean"]), float(row["cost_out4-prefix_mean"])
        assert flat > 0 and prefix > 0
    assert float(rows["gbon N=2 b=1 h=1 vader"]["kl_mean"]) == pytest.approx(
        np.mean([r["kl"] for r in gbon]))
    flat = {r["setting"]: float(r["cost_flat_mean"]) for r in rows.values()}
    assert flat["bon N=2 vader"] == pytest.approx(
        np.mean([r["billed_tokens"] for r in by["bon N=2 vader"]]))
    for name in ("reward_vs_latency.png", "reward_vs_cost_out4-prefix.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
