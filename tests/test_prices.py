"""Price models (`vas_proxy.prices`), the per-call usage they price (`Usage.calls`, shared
prefixes, reported cached tokens), the client's cached-token and `n` parsing on replayed wire
answers and on the real upstream, and the eval report's cost columns and plots."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json

import httpx2 as httpx
import pytest

from vas_proxy import defaults
from vas_proxy.errors import ConfigError
from vas_proxy.eval.report import summarise, write_report
from vas_proxy.prices import (BUILTIN, PriceModel, call_cost, cost, load_price_file,
                              parse_prices, record_calls)
from vas_proxy.protocol import UpstreamResult
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.upstream.retry import RetryPolicy
from vas_proxy.usage import Usage

P = BUILTIN

# ------------------------------------------------------------------ tables, by hand

SHORT = (100, 20, None, 0)  # nothing shared
GROWN = (150, 10, None, 130)  # an earlier call sent 130 of its 150 prompt tokens
LONG = (2000, 50, None, 1999)  # a guided-loop step on a long prompt
REPORTED = (2000, 50, 1536, 0)  # the upstream said 1536 prompt tokens came from its cache


def test_builtin_names_are_the_eval_defaults():
    assert [p.name for p in parse_prices(None)] == list(defaults.EVAL_PRICES)
    assert set(defaults.EVAL_PRICES) <= set(BUILTIN)


@pytest.mark.parametrize("name, call, expected, estimated", [
    # flat: every billed token is 1, whatever was shared or cached
    ("flat", SHORT, 120, False), ("flat", GROWN, 160, False), ("flat", LONG, 2050, False),
    ("flat", REPORTED, 2050, False),
    # out4: output 4x, no discount, so nothing needs estimating
    ("out4", SHORT, 100 + 80, False), ("out4", GROWN, 150 + 40, False),
    ("out4", REPORTED, 2000 + 200, False),
    # out4-prefix: shared prefix at 0.25 in 64-token blocks
    ("out4-prefix", SHORT, 180, True),
    ("out4-prefix", GROWN, (150 - 128) + 0.25 * 128 + 40, True),  # 130 -> 128
    ("out4-prefix", LONG, (2000 - 1984) + 0.25 * 1984 + 200, True),  # 1999 -> 1984
    ("out4-prefix", REPORTED, (2000 - 1536) + 0.25 * 1536 + 200, False),
    # openai: 0.5 only for prompts >= 1024 tokens, 128-token steps
    ("openai", GROWN, 150 + 40, True),  # 150 < 1024: no discount
    ("openai", LONG, (2000 - 1920) + 0.5 * 1920 + 200, True),  # 1999 -> 1920
    ("openai", REPORTED, (2000 - 1536) + 0.5 * 1536 + 200, False),
    # a reported number is used as reported, even below min_prompt
    ("openai", (500, 10, 256, 0), 244 + 128 + 40, False),
])
def test_call_cost_by_hand(name, call, expected, estimated):
    assert call_cost(call, P[name]) == pytest.approx(expected)
    assert cost([call], P[name]) == (pytest.approx(expected), estimated)


def test_cost_sums_calls_and_flags_any_estimate():
    total, est = cost([SHORT, GROWN], P["out4-prefix"])
    assert total == pytest.approx(180 + 94) and est
    assert cost([REPORTED, REPORTED], P["openai"]) == (pytest.approx(2 * 1432), False)
    assert cost([REPORTED, LONG], P["openai"])[1]  # one estimated call is enough
    assert cost([], P["openai"]) == (0.0, False)
    # the reported number never exceeds the prompt
    assert call_cost((10, 0, 99, 0), P["out4-prefix"]) == pytest.approx(2.5)


def test_own_table_in_dollars_is_counted_in_input_tokens(tmp_path):
    """A table written as a provider lists it (dollars per million) prices in input tokens."""
    path = tmp_path / "deepseek-usd.json"
    path.write_text(json.dumps({"input": 0.28, "output": 0.42, "cached_input": 0.028,
                                "step": 64, "note": "list prices"}))
    flat, own = parse_prices(f"flat,{path}")
    assert flat is P["flat"] and own.name == "deepseek-usd" and own.note == "list prices"
    # 1000 prompt tokens, 640 reported cached, 100 out: 360 + 640/10 + 100*1.5
    assert call_cost((1000, 100, 640, 0), own) == pytest.approx(360 + 64 + 150)
    named = tmp_path / "x.json"
    named.write_text('{"name": "mine", "output": 3}')
    assert load_price_file(named) == PriceModel("mine", output=3.0)
    assert parse_prices(["out4", str(named)])[1].name == "mine"
    assert parse_prices("") == [] and parse_prices("none") == []


@pytest.mark.parametrize("body, message", [
    ('{"inputs": 1}', "unknown field(s) inputs"),
    ('{"output": -1}', "output must be a number ≥ 0"),
    ('{"output": "4"}', "output must be a number"),
    ('{"cached_input": true}', "cached_input must be a number"),
    ('{"input": 0}', "input must be a number > 0"),
    ('{"step": 0}', "step must be a whole number ≥ 1"),
    ('{"min_prompt": 1.5}', "min_prompt must be a whole number"),
    ('{"name": "a b"}', "name 'a b' must be"),
    ('[1, 2]', "must hold one JSON object"),
    ('{"output": 4', "not valid JSON"),
])
def test_bad_price_files_name_the_file_and_field(tmp_path, body, message):
    path = tmp_path / "own.json"
    path.write_text(body)
    with pytest.raises(ConfigError) as e:
        parse_prices(f"flat,{path}")
    assert message in str(e.value) and str(path) in str(e.value)


def test_unknown_missing_and_duplicate_prices(tmp_path):
    with pytest.raises(ConfigError, match="unknown price model 'cheap'.*FILE.json"):
        parse_prices("flat,cheap")
    with pytest.raises(ConfigError, match="nope.json does not exist"):
        parse_prices(str(tmp_path / "nope.json"))
    (tmp_path / "flat.json").write_text("{}")
    with pytest.raises(ConfigError, match="'flat' is named twice"):
        parse_prices(f"flat,{tmp_path / 'flat.json'}")


def test_legacy_records_count_as_one_call():
    old = {"upstream_prompt_tokens": 300, "upstream_completion_tokens": 40}
    assert record_calls(old) == [(300, 40, None, 0)]
    assert record_calls({"calls": [[10, 1, None, 0], [11, 1, 4, 10]]}) == [
        (10, 1, None, 0), (11, 1, 4, 10)]
    assert cost(record_calls(old), P["out4-prefix"]) == (pytest.approx(460), True)


# ------------------------------------------------------------------ Usage: calls and prefixes

def res(prompt: str, prompt_tokens: int, completion: int = 1, cached_tokens=None,
        cached=False) -> UpstreamResult:
    return UpstreamResult([], prompt_tokens=prompt_tokens, completion_tokens=completion,
                          prompt=prompt, cached_tokens=cached_tokens, cached=cached)


def test_guided_loop_calls_share_the_prefix_so_far():
    """The loop re-sends prompt + response so far: each call shares the previous prompt."""
    u = Usage()
    for prompt, tokens in [("P:", 10), ("P: a", 11), ("P: a b", 12), ("P: a b c", 13)]:
        u.count(res(prompt, tokens))
    assert [c[3] for c in u.calls] == [0, 10, 11, 12]
    u.count(res("P: a b", 12, cached=True))  # a response-cache hit is not billed: no call
    u.count(res("Q: other", 9))  # an unrelated prompt shares nothing
    u.count(res("P: a b c d e", 15, completion=4))  # a draft call after all that
    assert [c[3] for c in u.calls] == [0, 10, 11, 12, 0, 13]
    assert len(u.calls) == u.upstream_calls == 6 and u.cache_hits == 1
    assert [c[:3] for c in u.calls][-1] == (15, 4, None)


def test_same_prompt_twice_and_best_of_n_shares():
    u = Usage()
    u.count(res("prompt", 20, completion=8))
    u.count(res("prompt", 20, completion=7))
    assert u.calls == [(20, 8, None, 0), (20, 7, None, 20)]
    # a pruned continuation re-sends prompt + partial: the prompt is its shared prefix
    u.count(res("prompt and partial", 26, completion=8))
    assert u.calls[-1] == (26, 8, None, 20)
    # no text to compare (token-id prompts): nothing shared
    u.count(res("", 20))
    assert u.calls[-1][3] == 0


def test_reported_cached_tokens_and_wire_fields():
    u = Usage()
    u.count(res("p", 5))
    assert u.upstream_cached_tokens is None
    assert u.vas_dict()["upstream_cached_tokens"] is None
    u.count(res("p q", 6, cached_tokens=4))
    u.count(res("p q r", 7, cached_tokens=0))
    assert u.upstream_cached_tokens == 4
    assert list(u.vas_dict()) == ["upstream_calls", "upstream_prompt_tokens",
                                  "upstream_completion_tokens", "cache_hits",
                                  "rejected_draft_tokens", "upstream_cached_tokens",
                                  "ambiguous_resolved", "ambiguous_ends", "unreachable_mass"]
    rec = u.record_dict()
    assert rec["calls"] == [[5, 1, None, 0], [6, 1, 4, 5], [7, 1, 0, 6]]
    assert rec["upstream_cached_tokens"] == 4
    json.dumps(rec)  # plain JSON: the prompt texts are not in it
    assert "_prompts" not in rec and "p q" not in json.dumps(rec)


def test_add_and_total_concatenate_calls():
    a, b = Usage(), Usage()
    a.count(res("prompt", 20, completion=3))
    a.count(res("prompt x", 21, completion=3))
    b.count(res("prompt", 20, completion=2, cached_tokens=16))
    b.upstream_seconds = 1.5
    total = Usage.total([a, b])
    assert total.upstream_calls == 3 and total.upstream_seconds == 1.5
    # b's call came after a's in the request: the prompt a sent is its shared prefix
    assert total.calls == [(20, 3, None, 0), (21, 3, None, 20), (20, 2, 16, 20)]
    assert total.upstream_cached_tokens == 16 and total.prompt_tokens == 0
    assert a.calls == [(20, 3, None, 0), (21, 3, None, 20)]  # the parts are unchanged
    assert b.calls == [(20, 2, 16, 0)]
    a.add(Usage())
    assert len(a.calls) == 2
    a.add(a)  # adding itself doubles every count and copies its calls once
    assert a.upstream_calls == 4 and [c[3] for c in a.calls] == [0, 20, 20, 21]


# -------------------------------------------------- the client on replayed wire answers

def answer(usage: dict, *, timings: dict | None = None, choices: list | None = None) -> dict:
    body = {"choices": choices or [{"index": 0, "text": " ok", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 2, **usage}}
    if timings is not None:
        body["timings"] = timings
    return body


def replay(body: dict, seen: list | None = None, **kw) -> UpstreamResult:
    def handler(req):
        if seen is not None:
            seen.append(json.loads(req.content))
        return httpx.Response(200, json=body)

    async def go():
        async with UpstreamClient("http://fake/v1", "m", use_cache=False,
                                  retry=RetryPolicy.none(),
                                  transport=httpx.MockTransport(handler)) as c:
            return await c.complete("the prompt", **{"max_tokens": 2, "top_k": 0, **kw})
    return asyncio.run(go())


@pytest.mark.parametrize("body, cached", [
    # OpenAI, and vLLM with --enable-prompt-tokens-details
    (answer({"prompt_tokens_details": {"cached_tokens": 32}}), 32),
    # DeepSeek: hit + miss = prompt
    (answer({"prompt_cache_hit_tokens": 24, "prompt_cache_miss_tokens": 16}), 24),
    # llama.cpp's C++ server: top-level timings
    (answer({}, timings={"cache_n": 39, "prompt_n": 1, "prompt_ms": 3.2}), 39),
    # newer llama.cpp sends both; they agree
    (answer({"prompt_tokens_details": {"cached_tokens": 39}}, timings={"cache_n": 39}), 39),
    # a cache that served nothing is 0, not "not reported"
    (answer({"prompt_tokens_details": {"cached_tokens": 0}}), 0),
    # llama-cpp-python, and vLLM without prompt-token details
    (answer({}), None), (answer({"prompt_tokens_details": None}), None),
    # malformed counts are not reports
    (answer({"prompt_cache_hit_tokens": "24"}), None),
    (answer({"prompt_tokens_details": {"cached_tokens": True}}, timings={"cache_n": -1}), None),
])
def test_reported_cached_token_shapes(body, cached):
    r = replay(body)
    assert r.cached_tokens == cached and r.prompt == "the prompt"
    assert (r.prompt_tokens, r.completion_tokens) == (40, 2)
    u = Usage()
    u.count(r)
    assert u.calls == [(40, 2, cached, 0)] and u.vas_dict()["upstream_cached_tokens"] == cached


def test_n_choices_in_one_answer():
    """A vLLM-shaped n=3 answer: every choice's text in index order, positions of choice 0."""
    def choice(i, text, finish):
        return {"index": i, "text": text, "finish_reason": finish, "logprobs": {
            "tokens": [text], "token_logprobs": [-0.5],
            "top_logprobs": [{text: -0.5, "x": -1.0, "y": -3.0}]}}
    body = answer({"completion_tokens": 3},
                  choices=[choice(2, " c", "stop"), choice(0, " a", "length"),
                           choice(1, " b", "length")])
    seen: list = []
    r = replay(body, seen, n=3, top_k=3, max_tokens=1, seed=4)
    assert seen[0]["n"] == 3
    assert r.choices == [(" a", "length"), (" b", "length"), (" c", "stop")]
    assert (r.text, r.finish_reason) == (" a", "length")
    assert [c.text for c in r.positions[0].candidates] == [" a", "x", "y"]
    assert r.completion_tokens == 3  # the upstream counts every choice's tokens
    one = replay(answer({}), seen, seed=4)
    assert "n" not in seen[1] and one.choices == [(" ok", "length")]


def test_n_is_part_of_the_cache_key_and_cached_fields_round_trip(tmp_path):
    calls = []

    def handler(req):
        body = json.loads(req.content)
        calls.append(body)
        n = body.get("n", 1)
        return httpx.Response(200, json=answer(
            {"prompt_tokens_details": {"cached_tokens": 8}},
            choices=[{"index": i, "text": f" {i}", "finish_reason": "length"}
                     for i in range(n)]))

    async def go():
        async with UpstreamClient("http://fake/v1", "m", cache_dir=str(tmp_path),
                                  retry=RetryPolicy.none(),
                                  transport=httpx.MockTransport(handler)) as c:
            kw = {"max_tokens": 2, "top_k": 0, "seed": 9}
            return [await c.complete("p", **kw), await c.complete("p", n=3, **kw),
                    await c.complete("p", n=3, **kw), await c.complete("p", **kw)]

    one, three, three_hit, one_hit = asyncio.run(go())
    assert len(calls) == 2  # n=1 and n=3 are different answers; the repeats are hits
    assert not one.cached and not three.cached and three_hit.cached and one_hit.cached
    assert dataclasses.replace(three_hit, cached=False) == three
    assert three_hit.choices == [(" 0", "length"), (" 1", "length"), (" 2", "length")]
    assert one_hit.cached_tokens == 8 and one_hit.prompt == "p"


# ------------------------------------------------------------------ the real upstream

def test_real_call_carries_its_prompt_and_round_trips_the_cache(upstream, tmp_path):
    """llama-cpp-python's server: the result holds the prompt sent; a response-cache hit
    gives the same usage (unbilled); it reports no cached tokens."""
    prompt = "The capital of France is"

    async def go():
        out = []
        for _ in range(2):  # two clients: the second answers from the disk cache
            async with UpstreamClient(upstream.base_url, upstream.model,
                                      cache_dir=str(tmp_path)) as c:
                out.append(await c.complete(prompt, max_tokens=3, top_k=5, seed=7))
        return out

    fresh, hit = asyncio.run(go())
    assert fresh.prompt == hit.prompt == prompt
    assert not fresh.cached and hit.cached
    assert fresh.prompt_tokens > 0 and fresh.completion_tokens > 0
    assert fresh.cached_tokens is None and hit.cached_tokens is None
    assert fresh.choices == hit.choices == [(fresh.text, fresh.finish_reason)]
    assert dataclasses.replace(hit, cached=False) == fresh
    u = Usage()
    u.count(fresh)
    u.count(hit)
    assert u.calls == [(fresh.prompt_tokens, fresh.completion_tokens, None, 0)]
    assert u.cache_hits == 1 and u.vas_dict()["upstream_cached_tokens"] is None


# ------------------------------------------------------------------ the eval report

def _record(setting, method, i, *, calls=None, kl=0.0, kl_kind="estimate", beta=0.0,
            best_of=None, reward=0.5, seconds=2.0, weights=None, legacy=False):
    calls = calls if calls is not None else [[30, 4, None, 0], [34, 4, None, 30]]
    rec = {"setting": setting, "method": method, "beta": beta, "weights": weights or {},
           "best_of": best_of, "bon_reward": "r" if best_of else None, "prompt_index": i,
           "sample": 0, "seed": i, "prompt": "p", "response": "x", "finish_reason": "length",
           "rewards": {"r": reward + 0.1 * i}, "kl": kl, "kl_kind": kl_kind,
           "tokens": 8, "upstream_calls": len(calls),
           "upstream_prompt_tokens": sum(c[0] for c in calls),
           "upstream_completion_tokens": sum(c[1] for c in calls),
           "billed_tokens": sum(c[0] + c[1] for c in calls), "cache_hits": 0,
           "rejected_draft_tokens": 0, "upstream_seconds": 1.0, "scoring_seconds": 0.1,
           "seconds": seconds + i}
    if not legacy:
        rec["calls"] = calls
        reported = [c[2] for c in calls if c[2] is not None]
        rec["upstream_cached_tokens"] = sum(reported) if reported else None
    return rec


def _records():
    out = []
    for i in range(2):
        out += [_record("base", "base", i),
                _record("vas b=2 v=1", "vas", i, beta=2.0, weights={"v": 1.0}, kl=1.0),
                _record("vas b=4 v=1", "vas", i, beta=4.0, weights={"v": 1.0}, kl=2.0),
                # a legacy Best-of-N record: no `calls`
                _record("bon N=2 r", "bon", i, best_of=2, calls=[[30, 4, None, 0]] * 2,
                        kl=0.19, kl_kind="bound", legacy=True),
                _record("bon N=4 r", "bon", i, best_of=4, calls=[[30, 4, None, 0]] * 4,
                        kl=0.64, kl_kind="bound"),
                _record("pbon N=4 r", "pbon", i, best_of=4, kl=None, kl_kind="none",
                        calls=[[30, 4, 30, 0]] * 4, beta=None),
                _record("pbon N=8 r", "pbon", i, best_of=8, kl=None, kl_kind="none",
                        calls=[[30, 4, 30, 0]] * 8, beta=None),
                _record("gbon N=2 b=2 r", "gbon", i, best_of=2, beta=2.0,
                        weights={"v": 1.0}, kl=None, kl_kind="none"),
                _record("gbon N=4 b=2 r", "gbon", i, best_of=4, beta=2.0,
                        weights={"v": 1.0}, kl=None, kl_kind="none")]
    return out


def test_summary_costs_per_price_model():
    rows = {r["setting"]: r for r in summarise(_records(), ["r"])}
    assert list(rows) == ["base", "vas b=2 v=1", "vas b=4 v=1", "bon N=2 r", "bon N=4 r",
                          "pbon N=4 r", "pbon N=8 r", "gbon N=2 b=2 r", "gbon N=4 b=2 r"]
    base = rows["base"]
    # calls (30, 4, -, 0), (34, 4, -, 30): flat 72; out4 96; out4-prefix: 30 cached -> 0 blocks
    assert base["cost_flat_mean"] == 72 and not base["cost_flat_estimated"]
    assert base["cost_out4_mean"] == 96 and not base["cost_out4_estimated"]
    assert base["cost_out4-prefix_mean"] == 96 and base["cost_out4-prefix_estimated"]
    assert base["cost_openai_mean"] == 96 and base["cost_openai_estimated"]
    assert base["cost_flat_se"] == 0.0
    legacy = rows["bon N=2 r"]  # one call of (60, 8, None, 0)
    assert legacy["cost_out4_mean"] == 92 and legacy["cost_out4-prefix_estimated"]
    pruned = rows["pbon N=4 r"]  # every call reported 30 cached of its 30
    assert pruned["cost_out4-prefix_mean"] == 4 * (0.25 * 30 + 16)
    assert not pruned["cost_out4-prefix_estimated"] and pruned["upstream_cached_tokens"] == 120
    assert pruned["kl_kind"] == "none" and pruned["kl_mean"] != pruned["kl_mean"]  # nan
    assert rows["gbon N=4 b=2 r"]["beta"] == 2.0 and rows["gbon N=4 b=2 r"]["weights"] == "v=1"
    only = summarise(_records(), ["r"], prices=parse_prices("out4"))[0]
    assert "cost_out4_mean" in only and "cost_flat_mean" not in only


def test_report_writes_cost_columns_and_plots(tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()))
    own = tmp_path / "mine.json"
    own.write_text('{"output": 2, "cached_input": 0.1, "step": 16}')
    (out / "eval.json").write_text(json.dumps({"rewards": {"r": "py:x:r"}, "values": {"v": "s"},
                                               "prices": ["flat", "out4-prefix", str(own)]}))
    written = write_report(out)
    names = {p.name for p in written.values()}
    assert {"summary.csv", "summary.md", "reward_vs_kl.png", "reward_vs_cost.png",
            "reward_vs_cost_out4-prefix.png", "reward_vs_cost_mine.png",
            "reward_vs_latency.png"} <= names
    assert "reward_vs_cost_flat.png" not in names  # flat's plot is reward_vs_cost.png
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {r["setting"]: r for r in csv.DictReader((out / "summary.csv").open())}
    for col in ("cost_flat_mean", "cost_flat_se", "cost_flat_estimated",
                "cost_out4-prefix_mean", "cost_mine_mean", "cost_mine_estimated",
                "upstream_cached_tokens", "seconds"):
        assert col in rows["base"], col
    assert "cost_openai_mean" not in rows["base"]  # only the run's prices
    # mine: (30, 4, -, 0) -> 30 + 8; (34, 4, -, 30) -> 16 shared: 18 + 1.6 + 8
    assert float(rows["base"]["cost_mine_mean"]) == pytest.approx(38 + 27.6)
    assert rows["base"]["cost_mine_estimated"] == "True"
    md = (out / "summary.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| setting"))
    assert "cost flat" in header and "cost out4-prefix" in header and "cost mine" in header
    assert "s / response" in header
    pbon = next(line for line in md.splitlines() if line.startswith("| pbon N=4"))
    assert "| – |" in pbon  # no KL
    base = next(line for line in md.splitlines() if line.startswith("| base"))
    assert "est." in base and "input 1, output 2, cached input 0.1" in md
    # the price file is found beside the results too, when the report is rebuilt elsewhere
    (out / "own.json").write_text('{"output": 3}')
    (out / "eval.json").write_text(json.dumps({"rewards": {"r": "x"}, "prices": "own.json"}))
    write_report(out)
    assert "cost_own_mean" in next(csv.DictReader((out / "summary.csv").open()))


def test_report_of_a_legacy_run_uses_the_default_prices(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    recs = [_record("base", "base", i, legacy=True) for i in range(3)]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    write_report(out)  # no eval.json, no calls: the defaults, one call per record
    row = next(csv.DictReader((out / "summary.csv").open()))
    for name in defaults.EVAL_PRICES:
        assert f"cost_{name}_mean" in row
    assert float(row["cost_out4_mean"]) == pytest.approx(64 + 32)
    assert row["cost_flat_estimated"] == "False" and row["cost_openai_estimated"] == "True"
    (out / "eval.json").write_text(json.dumps({"prices": ["flat", "cheap"]}))
    with pytest.raises(ConfigError, match="unknown price model 'cheap'"):
        write_report(out)


def test_best_of_families_are_curves_over_n():
    from vas_proxy.eval.plots import cost_plot_name, curves

    recs = _records() + [
        _record(f"pbon N={n} B=8 keep=0.5 r", "pbon", 0, best_of=n, kl=None, kl_kind="none")
        for n in (2, 4)]
    lines = curves(summarise(recs, ["r"]))
    assert [r["best_of"] for r in lines["Best-of-N (r)"]] == [2, 4]
    assert [r["best_of"] for r in lines["Best-of-N of VAS β=2 (r)"]] == [2, 4]
    assert [r["beta"] for r in lines["VAS v=1"]] == [0.0, 2.0, 4.0]  # from base
    pruned = sorted(k for k in lines if k.startswith("pruned"))
    assert pruned == ["pruned Best-of-N (r): pbon B=8 keep=0.5 r", "pruned Best-of-N (r): pbon r"]
    assert cost_plot_name("flat") == "reward_vs_cost.png"
    assert cost_plot_name("openai") == "reward_vs_cost_openai.png"
