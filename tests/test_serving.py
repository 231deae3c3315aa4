"""The service's parts alone, without llama.cpp: the `vas` schema (the engine's rules, with their
messages), the error envelope, the Best-of-N strategy selection, the formats and the SSE pump.
The app itself runs in-process over a fake upstream (service_helpers.FakeUpstream)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from vas_proxy.engine import Engine, Generation, GenerationRequest, Outcome, TokenEvent

from vas_proxy.guidance import Guidance
from vas_proxy.prompting import Prepared
from vas_proxy.errors import ConfigError, UpstreamError
from vas_proxy.protocol import Candidate
from vas_proxy.runtime import Runtime
from vas_proxy.service.app import create_app
from vas_proxy.service.errors import VAS_OPTION
from vas_proxy.service.formats import ChatFormat, CompletionFormat, sse_data
from vas_proxy.service.schemas import ChatCompletionRequest, CompletionRequest, VasOptions
from vas_proxy.service.serving import BestOf, Guided, Serving, sse
from vas_proxy.templates import load_template
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.usage import Usage
from vas_proxy.values.callable import CallableValue

from service_helpers import FakeUpstream


def length(prompts, responses):
    return [float(len(r)) for r in responses]


def runtime(rewards=None, **guidance) -> Runtime:
    fake = FakeUpstream(fail_status=None)
    engine = Engine(UpstreamClient("http://fake/v1", "m", transport=fake.transport(),
                                   use_cache=False),
                    {"h": CallableValue(lambda p, cs: [len(c) / 7 for c in cs], "h")},
                    defaults=Guidance(**{"beta": 1.0, "top_k": 5, **guidance}),
                    eos_texts=["<|im_end|>"])
    return Runtime(engine, load_template("chatml"), "m", "http://fake/v1", rewards=rewards or {})


def completion(**kw) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "p", **kw})


def chat(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw})


# ---------------------------------------------------------------------- the `vas` schema

def vas_failure(vas) -> ConfigError:
    """The rule's error a body with this `vas` fails with."""
    with pytest.raises(ValidationError) as info:
        completion(vas=vas)
    errs = [e for e in info.value.errors() if e["type"] == VAS_OPTION]
    assert errs, info.value.errors()
    return errs[0]["ctx"]["error"]


@pytest.mark.parametrize("field,value", [
    ("beta", "x"), ("beta", True), ("beta", None), ("beta", float("nan")), ("beta", float("inf")),
    ("top_k", 0), ("top_k", 1.0), ("top_k", True), ("top_k", None),
    ("speculate", 65), ("speculate", -2), ("speculate", "1"),
    ("trace", "yes"), ("trace", 1), ("trace", None),
    ("weights", [1]), ("weights", {"h": "x"}), ("weights", {"h": True}), ("weights", 3),
])
def test_vas_schema_uses_the_engine_rules(field, value):
    """The wire and every other caller (CLI flags, `wrap`, the eval) share one set of rules."""
    with pytest.raises(ConfigError) as direct:
        Guidance(**{field: value}).validate()
    wire = vas_failure({field: value})
    assert (wire.message, wire.param) == (direct.value.message, direct.value.param)
    assert wire.param == f"vas.{field}" and wire.message.startswith(f"vas.{field} must ")


@pytest.mark.parametrize("vas,message,param", [
    ({"beta": "x"}, "vas.beta must be a finite number with |beta| <= 10000", "vas.beta"),
    ({"top_k": 0}, "vas.top_k must be an integer >= 1", "vas.top_k"),
    ({"speculate": 99}, "vas.speculate must be an integer: 0 (one token per call), 1..64 "
                        "(drafted tokens per call) or -1 (adaptive)", "vas.speculate"),
    ({"trace": "yes"}, "vas.trace must be true or false", "vas.trace"),
    ({"weights": [1]}, "vas.weights must map value-model names to finite numbers",
     "vas.weights"),
    ({"reward_fn": "py:os:system", "beta": "x"},
     "unknown `vas` field(s): reward_fn; known: best_of, best_of_mode, beta, prune_block, "
     "prune_keep, reward, speculate, top_k, trace, weights", "vas"),
    ({"best_of": 0}, "vas.best_of must be an integer from 1 to 128", "vas.best_of"),
    ({"best_of": None}, "vas.best_of must be an integer from 1 to 128", "vas.best_of"),
    ({"best_of": 2.0}, "vas.best_of must be an integer from 1 to 128", "vas.best_of"),
    ({"reward": "len"}, "vas.reward is only used with vas.best_of", "vas.reward"),
    ({"reward": None}, "vas.reward is only used with vas.best_of", "vas.reward"),
    # the first failure in the engine's rule order
    ({"beta": "x", "top_k": 0}, "vas.beta must be", "vas.beta"),
    ({"weights": 3, "speculate": 99, "trace": 1}, "vas.speculate must be", "vas.speculate"),
    ({"weights": 3, "best_of": 0}, "vas.weights must map", "vas.weights"),
    ({"trace": 1, "reward": "len"}, "vas.trace must be", "vas.trace"),
])
def test_vas_schema_messages(vas, message, param):
    e = vas_failure(vas)
    assert e.message.startswith(message) and e.param == param


def test_vas_schema_accepts_and_keeps_what_was_given():
    body = completion(vas={"beta": 2, "top_k": 3, "weights": None, "best_of": 4})
    assert body.guidance_override() == {"beta": 2.0, "top_k": 3, "weights": None}
    assert body.vas.best_of == 4 and body.vas.reward is None
    assert completion(vas={}).guidance_override() == {}
    assert completion().guidance_override() is None
    assert VasOptions(beta=1.0).guidance() == {"beta": 1.0}
    # a reward that is not a string is the serving's to report (it knows the loaded names)
    assert completion(vas={"best_of": 2, "reward": 5}).vas.reward == 5


def test_non_object_vas_is_a_plain_type_error():
    with pytest.raises(ValidationError) as info:
        completion(vas=5)
    (err,) = info.value.errors()
    assert err["type"] == "dict_type" and err["msg"] == "Input should be a valid dictionary"


def test_requests_translate_into_engine_requests():
    g = Guidance(beta=3.0)
    reqs = completion(max_tokens=5, temperature=0.5, top_p=0.9, stop="x", seed=7,
                      n=3).generation_requests(Prepared("PROMPT"), g, "up")
    assert [r.seed for r in reqs] == [7, 8, 9]
    assert all(r.prompt == "PROMPT" and r.max_tokens == 5 and r.temperature == 0.5
               and r.top_p == 0.9 and r.stop == ["x"] and r.guidance is g and r.model == "up"
               for r in reqs)
    assert completion().generation_requests(Prepared("p"), g, None)[0].seed is None
    assert chat().token_limit() == 256
    assert chat(max_tokens=9).token_limit() == 9
    assert chat(max_tokens=9, max_completion_tokens=4).token_limit() == 4
    assert completion().token_limit() == 16
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
            {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]
    assert chat(messages=msgs).reward_prompt() == "u1"
    assert chat(messages=msgs[:1]).reward_prompt() == "s"
    assert chat(messages=msgs).chat_messages()[2] == {"role": "assistant", "content": "a"}


# ---------------------------------------------------------------------- the envelope, in-process

@pytest.fixture(scope="module")
def client():
    app = create_app(runtime({"a": length, "b": length}), api_key="k")
    with TestClient(app, raise_server_exceptions=False,
                    headers={"authorization": "Bearer k"}) as c:
        yield c


@pytest.mark.parametrize("body,status,message,param,code", [
    ({"vas": {"beta": "x"}}, 400, "vas.beta must be a finite number with |beta| <= 10000",
     "vas.beta",
     "invalid_request"),
    ({"vas": 5}, 400, "invalid value for vas: Input should be a valid dictionary", "vas",
     "invalid_value"),
    # the body's own fields are reported before its `vas` options
    ({"temperature": 5, "vas": {"beta": "x"}}, 400,
     "invalid value for temperature: Input should be less than or equal to 2", "temperature",
     "invalid_value"),
    ({"model": None, "vas": {"beta": "x"}}, 400, "invalid value for model: Input should be a "
     "valid string", "model", "invalid_value"),
    ({"vas": {"weights": {"evil": 1}}}, 400,
     "unknown value model(s) in vas.weights: evil; loaded: h", "vas.weights", "invalid_request"),
    ({"model": "nope"}, 404, "the model 'nope' does not exist here; served: m", "model",
     "model_not_found"),
    ({"vas": {"best_of": 2, "reward": "nope"}}, 400, "unknown reward 'nope' in vas.reward; "
     "loaded: a, b (a request can only name a reward the server loaded)", "vas.reward",
     "invalid_request"),
])
def test_error_envelope(client, body, status, message, param, code):
    r = client.post("/v1/completions", json={"model": "m", "prompt": "p", **body})
    assert r.status_code == status
    assert r.json() == {"error": {"message": message, "type": "invalid_request_error",
                                  "param": param, "code": code}}


def test_auth_and_unknown_paths(client):
    r = client.get("/v1/models", headers={"authorization": "Bearer no"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/models").json()["data"][0]["id"] == "m"
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert client.get("/health").json()["rewards"] == ["a", "b"]


def test_best_of_through_the_app(client):
    body = {"model": "m", "prompt": "p", "max_tokens": 3, "seed": 1,
            "vas": {"best_of": 2, "reward": "a"}}
    r = client.post("/v1/completions", json=body).json()
    choice = r["choices"][0]
    info = choice["vas_best_of"]
    assert info.pop("details")["mode"] == "plain"  # the mode's own facts (bestof_modes)
    assert info == {"n": 2, "reward": "a", "mode": "plain", "scores": [5.0, 5.0], "chosen": 0}
    assert r["usage"]["vas"]["upstream_calls"] == 2
    lines = client.post("/v1/completions", json={**body, "stream": True}).text.split("\n\n")
    events = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
    assert "".join(e["choices"][0]["text"] for e in events) == choice["text"]
    assert lines[-2] == "data: [DONE]"


# ---------------------------------------------------------------------- strategy selection

def test_strategy_selection():
    s = Serving(runtime({"a": length, "b": length}))
    assert isinstance(s.strategy(completion(), Guidance()), Guided)
    best = s.strategy(chat(vas={"best_of": 3, "reward": "b"}), Guidance())
    assert isinstance(best, BestOf) and (best.n, best.reward_name) == (3, "b")
    assert best.reward_prompt == "hi"
    assert s.strategy(completion(logprobs=0, vas={"best_of": 2, "reward": "a"}), Guidance())
    one = Serving(runtime({"only": length}))
    assert one.strategy(completion(vas={"best_of": 2}), Guidance()).reward_name == "only"


@pytest.mark.parametrize("rewards,vas,kw,guidance,message", [
    ({"a": length, "b": length}, {"best_of": 2}, {}, {},
     "vas.best_of needs vas.reward naming one of the rewards the server loaded; loaded: a, b"),
    ({}, {"best_of": 2}, {}, {}, "loaded: none (start it with --reward NAME=SPEC)"),
    ({"a": length}, {"best_of": 2, "reward": "py:os:system"}, {}, {},
     "unknown reward 'py:os:system' in vas.reward; loaded: a"),
    ({"a": length}, {"best_of": 2, "reward": 5}, {}, {}, "unknown reward 5 in vas.reward"),
    ({"a": length}, {"best_of": 2, "reward": "x" * 100}, {}, {}, "unknown reward 'xxx"),
    ({"a": length}, {"best_of": 2, "reward": "a"}, {"logprobs": 1}, {},
     "vas.trace and logprobs describe guided sampling"),
    ({"a": length}, {"best_of": 2, "reward": "a", "trace": True}, {}, {"trace": True},
     "not available with vas.best_of"),
    ({"a": length}, {"best_of": 2, "reward": "a"}, {}, {"trace": True},  # the server's default
     "not available with vas.best_of"),
])
def test_strategy_selection_errors(rewards, vas, kw, guidance, message):
    s = Serving(runtime(rewards))
    with pytest.raises(ConfigError) as info:
        s.strategy(completion(vas=vas, **kw), Guidance(**guidance))
    assert message in info.value.message and len(info.value.message) < 200
    assert info.value.param in ("vas.reward", "vas.best_of")


def test_best_of_strategy_answers():
    async def go():
        rt = runtime({"a": length})
        s = BestOf(rt.engine, 2, "a", length, "p")
        req = GenerationRequest(prompt="P", max_tokens=3, seed=1)
        gen = await s.generate(req)
        outcome = Outcome()
        events = [ev async for ev in s.stream(req, outcome)]
        await rt.engine.upstream.aclose()
        return gen, s.choice_fields(gen), events, outcome

    gen, fields, events, outcome = asyncio.run(go())
    assert gen.text == "Hello" and fields["vas_best_of"]["chosen"] == 0
    assert [ev.text for ev in events] == ["Hello"] and outcome.usage.upstream_calls == 2
    # its KL is Best-of-2's bound, log 2 − 1/2, on both paths
    assert fields["vas_kl"] == {"nats": round(np.log(2) - 0.5, 6), "kind": "bound"}
    assert (outcome.kl, outcome.kl_kind) == (pytest.approx(np.log(2) - 0.5), "bound")


# ---------------------------------------------------------------------- formats

def event(text: str, trace=None) -> TokenEvent:
    cands = [Candidate(text, -0.5), Candidate("b", -1.0), Candidate("c", -2.0)]
    return TokenEvent(text, text.encode(), float(np.log(0.6)), trace=trace, candidates=cands,
                      probs=np.array([0.6, 0.0, 0.4]))


def test_completion_format():
    fmt = CompletionFormat(completion(logprobs=2))
    gen = Generation("ab", "stop", [event("a"), event("b", trace={"chosen": "b"})],
                     Usage(prompt_tokens=3, completion_tokens=2))
    out = fmt.full([gen], gen.usage, [{"vas_best_of": {"n": 1}}])
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    (c,) = out["choices"]
    assert c["text"] == "ab" and c["finish_reason"] == "stop"
    assert c["vas_trace"] == [{"chosen": "b"}] and c["vas_best_of"] == {"n": 1}
    lp = c["logprobs"]
    assert lp["tokens"] == ["a", "b"] and lp["text_offset"] == [0, 1]
    assert list(lp["top_logprobs"][0]) == ["a", "c"]  # by q, the zero-probability one last
    assert out["usage"]["total_tokens"] == 5 and "vas" in out["usage"]
    # a guided choice's vas_kl: Σ over its states of KL(q ‖ p), p the base top-k renormalised
    p = np.exp([-0.5, -1.0, -2.0]) / np.exp([-0.5, -1.0, -2.0]).sum()
    state = 0.6 * np.log(0.6 / p[0]) + 0.4 * np.log(0.4 / p[2])
    assert Guided(None).choice_fields(gen) == {"vas_kl": {"nats": round(2 * state, 6),
                                                          "kind": "estimate"}}
    plain = CompletionFormat(completion())
    assert plain.stream_token(0, TokenEvent("", b"x", 0.0)) is None  # nothing printable yet
    chunk = plain.stream_token(1, TokenEvent("x", b"x", 0.0))
    assert chunk["choices"] == [{"text": "x", "index": 1, "logprobs": None,
                                 "finish_reason": None}]
    assert plain.stream_finish(0, "length")["choices"][0]["finish_reason"] == "length"
    assert plain.stream_finish(0, "stop", {"vas_kl": 1})["choices"][0]["vas_kl"] == 1
    assert plain.stream_start(2) == [] and plain.stream_usage(Usage())["choices"] == []


def test_chat_format():
    fmt = ChatFormat(chat(logprobs=True, top_logprobs=1))
    gen = Generation("a", "length", [event("a")], Usage())
    (c,) = fmt.full([gen], Usage())["choices"]
    assert c["message"] == {"role": "assistant", "content": "a", "refusal": None}
    (tok,) = c["logprobs"]["content"]
    assert tok["bytes"] == [97] and [t["token"] for t in tok["top_logprobs"]] == ["a"]
    assert "vas_trace" not in c
    starts = fmt.stream_start(2)
    assert [s["choices"][0]["delta"] for s in starts] == [{"role": "assistant", "content": ""}] * 2
    assert fmt.stream_token(0, TokenEvent("", b"", 0.0))["choices"][0]["delta"] == {"content": ""}
    assert ChatFormat(chat()).stream_token(0, TokenEvent("", b"", 0.0)) is None
    assert fmt.stream_finish(1, "stop")["choices"][0] == {"index": 1, "delta": {},
                                                         "logprobs": None,
                                                         "finish_reason": "stop"}
    assert sse_data({"a": [1, 2]}) == 'data: {"a":[1,2]}\n\n'


# ---------------------------------------------------------------------- the SSE pump

class Scripted:
    """A strategy whose choice i yields `texts[i]`, then fails with `fail` (if any)."""

    def __init__(self, texts, fail=None, hang=False):
        self.texts, self.fail, self.hang = texts, fail, hang
        self.cancelled = 0

    async def stream(self, req, outcome):
        for t in self.texts[req.seed]:
            outcome.usage.completion_tokens += 1
            yield TokenEvent(t, t.encode(), 0.0)
            await asyncio.sleep(0)
        if self.fail:
            raise self.fail
        if self.hang:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        outcome.finish_reason = "stop"


def pump(strategy, n, **kw) -> list[str]:
    reqs = [GenerationRequest(prompt="p", seed=i) for i in range(n)]

    async def go():
        return [x async for x in sse(strategy, reqs, CompletionFormat(completion()), **kw)]
    return asyncio.run(go())


def events(lines):
    return [json.loads(x[6:]) for x in lines if x.startswith("data: {")]


def test_pump_interleaves_choices_and_ends_with_usage():
    seen = []
    lines = pump(Scripted([["a", "b"], ["c"]]), 2, include_usage=True,
                 done=lambda usage, kls: seen.append((usage, kls)))
    evs = events(lines)
    by = {i: "".join(e["choices"][0]["text"] for e in evs if e["choices"]
                     and e["choices"][0]["index"] == i) for i in (0, 1)}
    assert by == {0: "ab", 1: "c"}
    finishes = [e["choices"][0]["finish_reason"] for e in evs if e["choices"]
                and e["choices"][0]["finish_reason"]]
    assert finishes == ["stop", "stop"]
    assert evs[-1]["choices"] == [] and evs[-1]["usage"]["completion_tokens"] == 3
    assert lines[-1] == "data: [DONE]\n\n" and seen[0][0].completion_tokens == 3
    # each choice's KL on its last chunk and to `done` (the scripted answers paid none)
    assert [e["choices"][0]["vas_kl"] for e in evs if e["choices"]
            and e["choices"][0]["finish_reason"]] == seen[0][1] == [
        {"nats": 0.0, "kind": "estimate"}] * 2


def test_pump_sends_an_error_event_then_done():
    lines = pump(Scripted([["a"]], fail=UpstreamError("upstream broke")), 1)
    assert events(lines)[-1] == {"error": {"message": "upstream broke", "type": "upstream_error",
                                           "param": None, "code": "upstream_error"}}
    assert lines[-1] == "data: [DONE]\n\n"
    crash = events(pump(Scripted([[]], fail=KeyError("x")), 1))[-1]["error"]
    assert crash["message"] == "internal error: KeyError" and crash["type"] == "server_error"


def test_closing_the_pump_cancels_generations():
    strategy = Scripted([["a"], ["b"]], hang=True)
    reqs = [GenerationRequest(prompt="p", seed=i) for i in range(2)]

    async def go():
        gen = sse(strategy, reqs, CompletionFormat(completion()))
        await gen.__anext__()  # the first token
        await asyncio.sleep(0.05)  # both choices are now waiting on their upstream
        await gen.aclose()  # what a client disconnect does
        await asyncio.sleep(0.01)
        return strategy.cancelled  # before asyncio.run cancels what is left

    assert asyncio.run(go()) == 2
