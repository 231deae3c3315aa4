"""`vas-proxy demo`: base vs VAS vs Best-of-N side by side (starts its own embedded upstream)."""

from __future__ import annotations

import time

import pytest

from vas_proxy import demo
from vas_proxy.cli import main
from vas_proxy.options import HEURISTIC_VALUE


def test_demo_runs_side_by_side(capsys):
    rc = main(["demo", "--prompts", "1", "--max-tokens", "4", "--best-of", "2",
               "--value", f"positivity={HEURISTIC_VALUE}", "--width", "120"])
    assert rc == 0
    out = capsys.readouterr().out
    assert demo.PROMPTS[0] in out
    header = next(line for line in out.splitlines() if line.startswith("base"))
    assert "VAS β=4 (positivity)" in header and "Best-of-2 (vader)" in header
    assert out.count("vader ") >= 3 and out.count(" calls, ") == 3
    # what each answer paid: the base nothing, Best-of-2 its bound log 2 − 1/2
    assert out.count(" nats") == 3 and "s, KL 0.00 nats" in out and "s, KL ≤ 0.19 nats" in out


def test_bundled_objectives_fall_back_to_the_heuristic(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "DATA_DIR", tmp_path)
    assert [(o.name, o.value, o.reward) for o in demo.bundled_objectives()] == [
        ("positivity", HEURISTIC_VALUE, "vader")]
    for name, reward in (("plain", "plain"), ("positivity", "vader")):
        (tmp_path / "values" / name).mkdir(parents=True)
        (tmp_path / "values" / name / "vas_value.json").write_text(
            '{"metadata": {"reward": "%s"}}' % reward)
    assert [(o.name, o.reward) for o in demo.bundled_objectives()] == [
        ("positivity", "vader"), ("plain", "plain")]


@pytest.mark.slow
def test_demo_default_is_quick(capsys):
    """The real default (bundled value models, 3 prompts) within the promised 3 minutes."""
    t0 = time.perf_counter()
    assert main(["demo"]) == 0
    assert time.perf_counter() - t0 < 180
    assert capsys.readouterr().out.count("== ") == 3


def test_demo_rejects_unknown_weights(capsys):
    assert main(["demo", "--weights", "nope=1", "--value",
                 f"positivity={HEURISTIC_VALUE}"]) == 1
    assert "--weights names nope" in capsys.readouterr().err
