"""Best-of-N modes (`bestof_modes`) on the real embedded upstream: value-pruned samples (the
survivors are the top-valued partials, replayed call by call; fewer tokens than plain; seeded
runs reproduce) and Best-of-N over VAS samples; their `vas` fields through the served app and the
real openai SDK, through `wrap`, and `vas-proxy generate`'s flags."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import openai
import pytest

import vas_proxy
from vas_proxy.assets import smollm2_gguf
from vas_proxy.bestof_modes import (block_seeds, check_best_of_fields, guided_best_of_n,
                                    guided_seeds, hybrid_kl, kept_count, pruned_best_of_n)
from vas_proxy.bestofn import best_of_n, kl_bound
from vas_proxy.cli import main
from vas_proxy.defaults import PRUNE_KEEP
from vas_proxy.engine import Engine, GenerationRequest
from vas_proxy.errors import ConfigError
from vas_proxy.guidance import Guidance
from vas_proxy.rewards import load_reward
from vas_proxy.runtime import Runtime
from vas_proxy.service.app import create_app
from vas_proxy.service.schemas import CompletionRequest
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.values.callable import CallableValue
from vas_proxy.values.loader import load_value

from service_helpers import serve_app
from valuefns import char_hash

E = "py:test_bestof_modes:e_count"
LENGTH = "py:test_bestof_modes:length"
STORY = "Write a long story about a dragon who loves tea."
STOP = ["<|im_end|>"]


def e_count(prompt: str, continuations: list[str]) -> list[float]:
    """A value we can predict: the number of letters 'e'."""
    return [float(c.count("e")) for c in continuations]


def length(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(len(r)) for r in responses]


class Recorder:
    """e_count that keeps every list of partial responses it was asked to rank."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, prompt: str, continuations: list[str]) -> list[float]:
        self.calls.append(list(continuations))
        return e_count(prompt, continuations)


def client(upstream, use_cache=False) -> UpstreamClient:
    return UpstreamClient(upstream.base_url, upstream.model, use_cache=use_cache)


def pruned(up, prompt, values, **kw):
    args = dict(n=4, reward=length, reward_prompt=STORY, values=values, weights=None,
                max_tokens=12, block=4, keep=0.5, stop=STOP, seed=5)
    return pruned_best_of_n(up, prompt, **{**args, **kw})


# ---------------------------------------------------------------------- the pruned function

@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_pruned_survivors_are_the_top_valued_partials(upstream, chat_prompt, sign):
    """Each sample is replayed call by call (prompt + partial, its block seed). At every boundary
    the value saw exactly the unfinished partials; the kept ones are the top ceil(keep × alive)
    by the weighted value, ties to the first; the pruned ones never grew."""
    prompt, rec, n = chat_prompt(STORY), Recorder(), 6

    async def go():
        async with client(upstream) as up:
            res = await pruned(up, prompt, {"e": CallableValue(rec, "e")}, n=n,
                               weights={"e": sign})
            seeds = block_seeds(5, n, 3)
            prefixes, tokens = [], []
            for i in range(n):  # block 0, then one more block per round that kept sample i
                blocks = 1 + sum(i in r["kept"] for r in res.details["rounds"])
                text, toks, steps = "", 0, []
                for j in range(blocks):
                    r = await up.complete(prompt + text, max_tokens=min(4, 12 - toks),
                                          top_k=0, seed=seeds[i][j], stop=STOP, cache=False)
                    text, toks = text + r.text, toks + r.completion_tokens
                    steps.append(text)
                prefixes.append(steps)
                tokens.append(toks)
            return res, prefixes, tokens

    res, prefixes, tokens = asyncio.run(go())
    d = res.details
    assert res.texts == [p[-1] for p in prefixes] and d["tokens"] == tokens
    assert d["rounds"] and any(d["pruned"])
    for r, rnd in enumerate(d["rounds"]):
        alive = rnd["alive"]
        assert rec.calls[r] == [prefixes[i][r] for i in alive]
        v = [sign * p[r].count("e") for p in (prefixes[i] for i in alive)]
        assert rnd["values"] == pytest.approx([x - sum(v) / len(v) for x in v])
        ranked = sorted(range(len(alive)), key=lambda k: (-v[k], k))
        assert rnd["kept"] == sorted(alive[k] for k in ranked[:kept_count(0.5, len(alive))])
        for i in set(alive) - set(rnd["kept"]):
            assert d["pruned"][i] and len(prefixes[i]) == r + 1 and tokens[i] == 4 * (r + 1)
        later = d["rounds"][r + 1]["alive"] if r + 1 < len(d["rounds"]) else []
        assert set(later) <= set(rnd["kept"])
    assert len(rec.calls) == len(d["rounds"])
    # the reward picks among the samples not pruned; the pruned have no score
    done = [i for i in range(n) if not d["pruned"][i]]
    assert [s is None for s in res.scores] == d["pruned"]
    assert res.index == max(done, key=lambda i: (len(res.texts[i]), -i))
    assert res.text == res.texts[res.index] and res.score == len(res.text)
    u = res.usage
    assert u.upstream_calls == n + sum(len(r["kept"]) for r in d["rounds"])
    assert u.upstream_completion_tokens == sum(tokens)
    assert u.completion_tokens == tokens[res.index]


def test_pruning_saves_tokens_and_keep_1_continues_all(upstream, chat_prompt):
    prompt, values = chat_prompt(STORY), {"e": CallableValue(e_count, "e")}

    async def go():
        async with client(upstream) as up:
            half = await pruned(up, prompt, values, keep=0.5, seed=7)
            full = await pruned(up, prompt, values, keep=1.0, seed=7)
            whole = await pruned(up, prompt, values, block=12, seed=7)  # one block: no ranking
            plain = await best_of_n(up, prompt, n=4, reward=length, reward_prompt=STORY,
                                    max_tokens=12, stop=STOP, seed=7)
            return half, full, whole, plain

    half, full, whole, plain = asyncio.run(go())
    assert any(half.details["pruned"])
    assert half.usage.upstream_completion_tokens < plain.usage.upstream_completion_tokens
    assert not any(full.details["pruned"]) and full.details["rounds"]
    assert all(r["kept"] == r["alive"] for r in full.details["rounds"])
    assert all(t == 12 for t in full.details["tokens"])  # a long story: none ends early
    assert full.usage.upstream_calls == 4 * 3
    assert whole.texts == plain.texts and whole.index == plain.index
    assert whole.usage.upstream_completion_tokens == plain.usage.upstream_completion_tokens


def test_pruned_seeded_runs_reproduce(upstream, chat_prompt):
    prompt, values = chat_prompt(STORY), {"e": CallableValue(e_count, "e")}

    async def go():
        async with client(upstream, use_cache=True) as up, client(upstream) as fresh:
            a = await pruned(up, prompt, values, seed=9)
            b = await pruned(up, prompt, values, seed=9)  # answered by the cache
            c = await pruned(fresh, prompt, values, seed=9)  # asked again: the same answers
            u = [await pruned(up, prompt, values, seed=None) for _ in range(2)]
            return a, b, c, u

    a, b, c, (u1, u2) = asyncio.run(go())
    assert a.texts == b.texts == c.texts and a.details == b.details == c.details
    assert a.usage.cache_hits == 0 and b.usage.upstream_calls == 0
    assert b.usage.cache_hits == a.usage.upstream_calls
    assert u1.texts != u2.texts and u2.usage.cache_hits == 0  # unseeded: random, never cached
    assert block_seeds(9, 2, 3)[1][:2] == block_seeds(9, 2, 2)[1]


def test_pruned_with_the_bundled_value_model(upstream, chat_prompt):
    """The real checkpoint scorer ranks whole partial responses: each round's values are what
    it gives each partial alone (centred), and the top ones are kept."""
    model = load_value("bundled:positivity", quiet=True)
    seen: list[list[str]] = []

    class Spy:
        name = "positivity"

        def score(self, prompt, response, candidates):
            seen.append(list(candidates))
            return model.score(prompt, response, candidates)

    prompt = chat_prompt("Describe your perfect weekend.")

    async def go():
        async with client(upstream) as up:
            return await pruned(up, prompt, {"positivity": Spy()}, n=4, max_tokens=8, seed=2)

    res = asyncio.run(go())
    (rnd,) = res.details["rounds"]  # 8 tokens in blocks of 4: one boundary
    alone = [model.score(prompt, "", [p])[0] for p in seen[0]]
    mean = sum(alone) / len(alone)
    assert rnd["values"] == pytest.approx([a - mean for a in alone], abs=1e-3)
    top = sorted(range(len(alone)), key=lambda k: -alone[k])[:kept_count(0.5, len(alone))]
    assert rnd["kept"] == sorted(rnd["alive"][k] for k in top)


def test_kept_count():
    assert [kept_count(0.5, a) for a in (1, 2, 3, 4, 5)] == [1, 1, 2, 2, 3]
    assert kept_count(0.3, 10) == 3 and kept_count(1.0, 7) == 7 and kept_count(0.01, 3) == 1


@pytest.mark.parametrize("kw,param", [
    ({"block": 0}, "vas.prune_block"), ({"keep": 0}, "vas.prune_keep"), ({"n": 0}, "vas.best_of"),
    ({"keep": 1.5}, "vas.prune_keep"), ({"weights": {"x": 1}}, "vas.weights"),
    ({"weights": {"e": 0}}, "vas.weights")])
def test_pruned_arguments_follow_the_rules(kw, param):
    with pytest.raises(ConfigError) as info:  # before any upstream call (there is none)
        asyncio.run(pruned(None, "p", {"e": CallableValue(e_count, "e")}, **kw))
    assert info.value.param == param


# ---------------------------------------------------------------------- guided Best-of-N

def test_guided_best_of_n_is_best_of_the_engines_own(upstream, chat_template, chat_prompt):
    async def go():
        engine = Engine(client(upstream), {"e": CallableValue(e_count, "e")},
                        defaults=Guidance(beta=2.0, top_k=5, speculate=0),
                        eos_texts=chat_template.stop_strings)
        req = GenerationRequest(prompt=chat_prompt("Say something nice."), max_tokens=6,
                                seed=3, guidance=engine.defaults)
        one = await guided_best_of_n(engine, req, n=1, reward=length, reward_prompt="x")
        own = await engine.generate(replace(req, seed=guided_seeds(3, 1)[0]))
        three = await guided_best_of_n(engine, req, n=3, reward=length, reward_prompt="x")
        gens = [await engine.generate(replace(req, seed=s)) for s in guided_seeds(3, 3)]
        await engine.upstream.aclose()
        return one, own, three, gens

    one, own, three, gens = asyncio.run(go())
    assert (one.text, one.finish_reason, one.index) == (own.text, own.finish_reason, 0)
    assert one.usage.upstream_calls == own.usage.upstream_calls
    assert one.usage.completion_tokens == own.usage.completion_tokens
    assert three.texts == [g.text for g in gens] and len(set(three.texts)) > 1
    assert three.index == max(range(3), key=lambda i: (len(gens[i].text), -i))
    assert three.usage.upstream_calls == sum(g.usage.upstream_calls for g in gens)
    assert three.usage.completion_tokens == gens[three.index].usage.completion_tokens
    assert three.details["kl"] == pytest.approx([g.kl for g in gens])
    assert three.details["kl_bound"] == pytest.approx(kl_bound(3) + gens[three.index].kl)
    assert three.details["mode"] == "guided" and three.details["beta"] == 2.0
    assert guided_seeds(None, 2) == [None, None] and guided_seeds(3, 3)[:1] == guided_seeds(3, 1)


@pytest.mark.parametrize("n", [2, 4, 16])
def test_hybrid_kl_bounds_the_exact_kl_of_best_of_n_over_a_tilted_law(n):
    """`hybrid_kl` on an enumerable law: 2-token responses over 4 tokens, a random base p, the
    token-wise tilt q ∝ p·exp(β·V) and a reward that agrees with V, Best-of-n over q picked
    exactly (A(y) = F(y)ⁿ − F(y⁻)ⁿ, rewards distinct). The identity KL(A‖p) = KL(A‖q) +
    E_A[log q/p] holds, KL(A‖q) is within Best-of-n's bound, so the expectation of `hybrid_kl`
    over the winner bounds KL(A‖p). The winner's mean log q/p exceeds KL(q‖p): it is a
    response the tilt favoured, so the bound must take the winner's own figure."""
    rng = np.random.default_rng(n)
    k, beta = 4, 2.0
    first = rng.dirichlet(np.ones(k))
    second = rng.dirichlet(np.ones(k), size=k)
    value = rng.normal(size=(k, k))  # V of the response (a, b); V(a) its mean over b
    tilt1 = first * np.exp(beta * value.mean(axis=1))
    tilt1 /= tilt1.sum()
    tilt2 = second * np.exp(beta * value)
    tilt2 /= tilt2.sum(axis=1, keepdims=True)
    p = (first[:, None] * second).ravel()
    q = (tilt1[:, None] * tilt2).ravel()
    reward = value.ravel() + 1e-3 * rng.normal(size=k * k)
    order = np.argsort(reward)
    top = np.cumsum(q[order])
    a = np.empty_like(q)
    a[order] = top ** n - np.concatenate([[0.0], top[:-1]]) ** n
    kl_ap, kl_aq = float(np.sum(a * np.log(a / p))), float(np.sum(a * np.log(a / q)))
    winner_log_ratio = float(np.sum(a * np.log(q / p)))
    assert kl_ap == pytest.approx(kl_aq + winner_log_ratio, rel=1e-9)
    assert kl_aq <= kl_bound(n) + 1e-12
    expected = float(np.sum(a * np.array([hybrid_kl(n, x) for x in np.log(q / p)])))
    assert kl_ap <= expected + 1e-12
    assert winner_log_ratio > float(np.sum(q * np.log(q / p)))


# ---------------------------------------------------------------------- the service

@pytest.fixture(scope="module")
def service(upstream, chat_template):
    engine = Engine(client(upstream, use_cache=True),
                    {"e": CallableValue(e_count, "e"), "h": CallableValue(char_hash, "h")},
                    defaults=Guidance(beta=1.0, top_k=5), eos_texts=chat_template.stop_strings)
    app = create_app(Runtime(engine, chat_template, upstream.model, upstream.base_url,
                             rewards={"len": load_reward(LENGTH), "vader": load_reward("vader")}))
    with serve_app(app) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0), upstream.model


def test_service_pruned_is_the_function(service, upstream, chat_template):
    sdk, model = service
    vas = {"best_of": 4, "reward": "len", "best_of_mode": "pruned", "prune_block": 4,
           "prune_keep": 0.5, "weights": {"e": 1}}
    kw = dict(model=model, prompt="Once upon a time", max_tokens=12, seed=4)
    r = sdk.completions.create(**kw, extra_body={"vas": vas})
    info = r.choices[0].model_extra["vas_best_of"]

    async def direct():
        async with client(upstream) as up:
            return await pruned_best_of_n(
                up, "Once upon a time", n=4, reward=length, reward_prompt="Once upon a time",
                values={"e": CallableValue(e_count, "e")}, weights={"e": 1}, max_tokens=12,
                block=4, keep=0.5, stop=sorted(chat_template.stop_strings), seed=4)

    d = asyncio.run(direct())
    assert r.choices[0].text == d.text
    assert info == {"n": 4, "reward": "len", "mode": "pruned", "scores": d.scores,
                    "chosen": d.index, "details": d.details}
    assert r.usage.completion_tokens == d.usage.completion_tokens
    assert r.usage.model_extra["vas"]["upstream_calls"] == d.usage.upstream_calls
    text = "".join(c.choices[0].text for c in sdk.completions.create(
        **kw, stream=True, extra_body={"vas": vas}) if c.choices)
    assert text == d.text


def test_service_guided_best_of(service):
    sdk, model = service
    r = sdk.completions.create(model=model, prompt="Today I", max_tokens=5, seed=1,
                               extra_body={"vas": {"best_of": 2, "reward": "len",
                                                   "best_of_mode": "guided", "beta": 3}})
    info = r.choices[0].model_extra["vas_best_of"]
    assert info["mode"] == "guided" and info["details"]["beta"] == 3.0
    assert info["details"]["kl_bound"] == pytest.approx(
        kl_bound(2) + info["details"]["kl"][info["chosen"]])
    assert len(info["details"]["kl"]) == 2 and info["scores"][info["chosen"]] == max(
        info["scores"]) == len(r.choices[0].text)
    # guided: one upstream call (at least) per generated token of both samples
    assert r.usage.model_extra["vas"]["upstream_calls"] >= sum(info["details"]["tokens"])


POS = {"best_of": 2, "reward": "len"}
PRUNED = {**POS, "best_of_mode": "pruned"}
BAD = [
    ({**POS, "best_of_mode": "best"}, "vas.best_of_mode",
     "vas.best_of_mode must be one of plain, pruned, guided"),
    ({**POS, "best_of_mode": None}, "vas.best_of_mode", "must be one of"),
    ({"best_of_mode": "pruned"}, "vas.best_of_mode", "vas.best_of_mode is only used with "
                                                     "vas.best_of"),
    ({**POS, "prune_block": 4}, "vas.prune_block",
     'vas.prune_block is only used with vas.best_of_mode "pruned"'),
    ({**POS, "best_of_mode": "guided", "prune_keep": 0.5}, "vas.prune_keep",
     'vas.prune_keep is only used with vas.best_of_mode "pruned"'),
    ({**PRUNED, "prune_keep": 0}, "vas.prune_keep", "vas.prune_keep must be a number in (0, 1]"),
    ({**PRUNED, "prune_keep": 1.5}, "vas.prune_keep", "must be a number in (0, 1]"),
    ({**PRUNED, "prune_keep": True}, "vas.prune_keep", "must be a number in (0, 1]"),
    ({**PRUNED, "prune_block": 0}, "vas.prune_block", "vas.prune_block must be an integer >= 1"),
    ({**PRUNED, "prune_block": 2.5}, "vas.prune_block", "must be an integer >= 1"),
    ({**PRUNED, "prune_block": "4"}, "vas.prune_block", "must be an integer >= 1"),
]


@pytest.mark.parametrize("vas,param,message", BAD + [
    ({**PRUNED, "weights": {"nope": 1}}, "vas.weights",
     "unknown value model(s) in vas.weights: nope; loaded: e, h"),
    ({**PRUNED, "weights": {"e": 0}}, "vas.weights", "it needs one with a nonzero weight"),
])
def test_service_errors(service, vas, param, message):
    sdk, model = service
    with pytest.raises(openai.BadRequestError) as info:
        sdk.completions.create(model=model, prompt="Hi", max_tokens=2, extra_body={"vas": vas})
    e = info.value
    assert e.status_code == 400 and e.param == param and message in e.message
    assert e.body["type"] == "invalid_request_error" and e.body["code"] == "invalid_request"


@pytest.mark.parametrize("vas,param,message", BAD)
def test_wire_and_flags_share_the_rules(vas, param, message):
    with pytest.raises(ConfigError) as direct:
        check_best_of_fields(vas)
    with pytest.raises(Exception) as wire:
        CompletionRequest.model_validate({"model": "m", "prompt": "p", "vas": vas})
    (err,) = [e["ctx"]["error"] for e in wire.value.errors() if e["type"] == "vas_option"]
    assert (err.message, err.param) == (direct.value.message, direct.value.param)
    assert err.param == param and message in err.message


# ---------------------------------------------------------------------- wrap and generate

def test_wrap_pruned_chat(upstream):
    c = openai.OpenAI(base_url=upstream.base_url, api_key="sk", max_retries=0)
    with vas_proxy.wrap(c, values={"e": E}, rewards={"len": LENGTH},
                        chat_template=str(smollm2_gguf())) as g:
        kw = dict(model=upstream.model, max_tokens=8, seed=2,
                  messages=[{"role": "user", "content": "Tell me about tea."}],
                  extra_body={"vas": {"best_of": 3, "best_of_mode": "pruned",
                                      "prune_block": 4, "prune_keep": 0.34}})
        r = g.chat.completions.create(**kw)
        stream = "".join(x.choices[0].delta.content or ""
                         for x in g.chat.completions.create(stream=True, **kw) if x.choices)
        with pytest.raises(openai.BadRequestError) as bad:
            g.chat.completions.create(**{**kw, "extra_body": {"vas": {
                "best_of": 3, "best_of_mode": "pruned", "prune_keep": 1.5}}})
    info = r.choices[0].model_extra["vas_best_of"]
    d = info["details"]
    assert info["mode"] == "pruned" and (d["block"], d["keep"]) == (4, 0.34)
    assert d["rounds"] and all(len(x["kept"]) == kept_count(0.34, len(x["alive"]))
                               for x in d["rounds"])
    content = r.choices[0].message.content
    assert stream == content and len(content) == info["scores"][info["chosen"]]
    assert r.usage.completion_tokens == d["tokens"][info["chosen"]]
    assert bad.value.status_code == 400 and bad.value.param == "vas.prune_keep"


def test_generate_best_of_flags(upstream, capsys):
    base = ["generate", "Once upon a time", "--upstream", upstream.base_url, "--model",
            upstream.model, "--value", f"e={E}", "--max-tokens", "8", "--seed", "1",
            "--no-cache", "--reward", f"len={LENGTH}", "--best-of", "2"]
    assert main([*base, "-q", "--best-of-mode", "pruned", "--prune-block", "4"]) == 0
    out = capsys.readouterr().out

    async def direct():  # no chat template for a given upstream: the raw prompt, no stops
        async with client(upstream) as up:
            return await pruned_best_of_n(
                up, "Once upon a time", n=2, reward=length, reward_prompt="Once upon a time",
                values={"e": CallableValue(e_count, "e")}, weights=None, max_tokens=8,
                block=4, keep=PRUNE_KEEP, seed=1)

    assert out == asyncio.run(direct()).text + "\n"
    assert main([*base, "--best-of-mode", "guided"]) == 0
    got = capsys.readouterr()
    assert got.out.strip() and "best of 2 (guided): sample" in got.err
    assert "KL to the base ≤ " in got.err  # guided Best-of-N's bound
    with pytest.raises(SystemExit) as exit_:  # not a mode: a bad flag
        main([*base, "--best-of-mode", "best"])
    assert exit_.value.code == 2


@pytest.mark.parametrize("args,message", [
    (["--prune-block", "4"], 'vas.prune_block is only used with vas.best_of_mode "pruned"'),
    (["--best-of", "2"], "--best-of needs --reward"),
    (["--reward", "vader"], "vas.reward is only used with vas.best_of"),
    (["--best-of", "2", "--reward", "vader", "--best-of-mode", "pruned", "--prune-keep", "0"],
     "vas.prune_keep must be a number in (0, 1]"),
    (["--best-of", "0", "--reward", "vader"], "vas.best_of must be an integer"),
])
def test_generate_best_of_flag_errors(args, message, capsys):
    """Refused before anything starts (no upstream is given: none would be reached)."""
    assert main(["generate", "hi", *args]) == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert message in line
