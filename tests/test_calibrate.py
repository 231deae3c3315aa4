"""`vas-proxy calibrate`: the predicted KL per beta and the beta for a budget, its errors, and a
run on the real llama-server with a real value model."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest

from vas_proxy.cli import main
from vas_proxy.train.candidates import CandidateState
from vas_proxy.train.onestep import beta_for_kl, predicted_kl

from valuefns import char_prob


def _states(n: int = 30, k: int = 5):
    rng = np.random.default_rng(0)
    states, values = [], []
    for i in range(n):
        lp = np.sort(np.log(rng.dirichlet(np.ones(k))))[::-1]
        states.append(CandidateState(i, 0, i, 64, "p", "p", 40, 3, "x", ["a"] * k, list(lp),
                                     [False] * k))
        values.append(list(rng.normal(size=k)))
    return states, values


def test_predicted_kl_grows_with_beta_and_the_budget_beta_spends_the_budget():
    states, values = _states()
    kls = [predicted_kl(states, values, b)[0] for b in (0, 0.5, 1, 2, 4)]
    assert kls[0] == 0 and all(a < b for a, b in pairwise(kls))
    beta = beta_for_kl(states, values, 1.84)
    assert predicted_kl(states, values, beta)[0] == pytest.approx(1.84, rel=1e-2)
    # n tokens per response: a state stands for its response's positions
    assert predicted_kl(states, values, 1.0)[0] == pytest.approx(
        40 * np.mean([predicted_kl([s], [v], 1.0)[0] / 40 for s, v in zip(states, values)]))


def test_no_beta_spends_a_budget_the_values_cannot_reach():
    states, values = _states()
    flat = [[0.5] * len(v) for v in values]
    assert predicted_kl(states, flat, 100.0)[0] == 0
    assert beta_for_kl(states, flat, 1.0) is None


@pytest.mark.parametrize("flags, message", [
    (["--limit", "0"], "--limit must be >= 1"),
    (["--kl", "-1"], "--kl must be > 0"),
    (["--betas", "1,-2"], "--betas must be >= 0"),
    (["--betas", "1,x"], "--betas"),
    (["--check", "8"], "--check measures the beta found for --kl"),
    (["--kl", "1", "--check", "-1"], "--check needs at least 2 responses"),
    (["--kl", "1", "--check", "1"], "--check needs at least 2 responses"),  # no error bar
    (["--kl", "1", "--check", "8", "--rounds", "0"], "--rounds must be >= 1"),
])
def test_bad_flags_fail_before_anything_starts(flags, message, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    assert main(["calibrate", "--prompts", str(prompts), *flags]) == 1
    assert message in capsys.readouterr().err


def test_a_flag_it_would_ignore_is_refused(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", "--prompts", "p.jsonl", "--speculate", "2"])
    assert exit_.value.code == 2


def test_calibrate_on_llama_server_with_a_real_value_model(llama_server, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": t}]}) + "\n"
                               for t in ("Describe your morning.", "What is a good book?")))
    out = tmp_path / "cal"
    args = ["calibrate", "--prompts", str(prompts), "--upstream", llama_server.base_url,
            "--provider", "llama-server", "--value", "plain=bundled:plain", "--samples", "2",
            "--max-tokens", "16", "--kl", "0.3", "--out", str(out), "--no-cache", "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    result = json.loads((out / "calibration.json").read_text())
    assert result["states"] == 4 and result["top_k"] == 20
    kls = [row["kl"] for row in result["betas"].values()]
    assert all(a < b for a, b in pairwise(kls))
    budget = result["budget"]
    assert budget["predicted"]["kl"] == pytest.approx(0.3, rel=1e-2)
    assert f"--beta {budget['beta']:.3g}" in text
    states = (out / "states.jsonl").read_text()
    assert all(len(json.loads(line)["texts"]) <= 20 for line in states.splitlines())
    # a rerun reuses the stored states and predicts the same
    assert main(args) == 0
    assert (out / "states.jsonl").read_text() == states
    assert json.loads((out / "calibration.json").read_text()) == result
    # --check: guided responses measure the KL at that beta; the next round's beta is the
    # prediction scaled by measured ÷ predicted, solved again; the states are still reused
    assert main([*args, "--check", "3", "--rounds", "2"]) == 0
    text = capsys.readouterr().out
    check = json.loads((out / "calibration.json").read_text())["check"]
    first, second = check["rounds"]
    assert first["beta"] == pytest.approx(budget["beta"])
    assert first["predicted"] == pytest.approx(0.3, rel=1e-2)
    assert first["measured"] > 0 and first["measured_se"] >= 0
    assert second["predicted"] == pytest.approx(0.3 * first["predicted"] / first["measured"],
                                                rel=1e-2)
    assert (second["beta"] > first["beta"]) == (first["measured"] < first["predicted"])
    assert check["beta"] is not None and f"measured: --beta {check['beta']:.3g}" in text
    assert (out / "states.jsonl").read_text() == states
    # a `binary:` value: its predicted KL at each beta is that of the soft target
    # p·(1 + (e^β − 1)·P) on the same stored states, computed here by hand
    soft = [a if a != "plain=bundled:plain" else "b=binary:py:valuefns:char_prob" for a in args]
    assert main(soft) == 0
    table = json.loads((out / "calibration.json").read_text())["betas"]
    for beta in (1.0, 4.0):
        want = []
        for line in states.splitlines():
            st = json.loads(line)
            p = np.exp(st["logprobs"]) / np.exp(st["logprobs"]).sum()
            prob = np.array(char_prob(st["upstream_prompt"],
                                      [st["prefix"] + t for t in st["texts"]]))
            q = p * (1 + np.expm1(beta) * prob)
            q /= q.sum()
            want.append(st["n_tokens"] * float(np.sum(q * np.log(q / p))))
        assert table[f"{beta:g}"]["kl"] == pytest.approx(np.mean(want), rel=1e-6)
    # an unknown weight name is a clear error
    assert main([*args, "--weights", "nope=1"]) == 1
    assert "--weights names nope" in capsys.readouterr().err
