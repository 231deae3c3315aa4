"""Best-of-N: the function (real upstream), and `vas.best_of` on the service and through `wrap`."""

from __future__ import annotations

import asyncio
import math

import openai
import pytest

import vas_proxy
from vas_proxy.assets import smollm2_gguf
from vas_proxy.bestofn import best_of_n, kl_bound, sample_seeds
from vas_proxy.engine import Engine
from vas_proxy.guidance import Guidance
from vas_proxy.rewards import load_reward
from vas_proxy.options import parse_reward_specs
from vas_proxy.runtime import Runtime
from vas_proxy.service.app import create_app
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.values.callable import CallableValue

from service_helpers import serve_app
from valuefns import char_hash

LENGTH = "py:test_bestofn:length_reward"


def length_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Deterministic: longer is better (ties are rare at 8 tokens)."""
    return [float(len(r)) for r in responses]


def test_kl_bound():
    assert kl_bound(1) == 0.0
    assert kl_bound(4) == pytest.approx(math.log(4) - 0.75)
    assert kl_bound(16) == pytest.approx(math.log(16) - 15 / 16)


def test_best_of_returns_the_maximum_of_plain_samples(upstream, chat_prompt):
    prompt = chat_prompt("Name a colour and say why you like it.")
    stop = ["<|im_end|>"]

    async def go():
        async with UpstreamClient(upstream.base_url, upstream.model, use_cache=False) as up:
            res = await best_of_n(up, prompt, n=4, reward=load_reward(LENGTH),
                                  reward_prompt="Name a colour.", max_tokens=8, stop=stop,
                                  seed=11)
            # each sample is one plain completion (text only) with its derived seed
            plain = [await up.complete(prompt, max_tokens=8, top_k=0, seed=s, stop=stop,
                                       cache=False) for s in sample_seeds(11, 4)]
            # top_k: the samples come from the upstream's top-k distribution (the base of VAS)
            top3 = await best_of_n(up, prompt, n=4, reward=load_reward(LENGTH),
                                   reward_prompt="Name a colour.", max_tokens=8, stop=stop,
                                   seed=11, top_k=3)
            plain3 = [await up.complete(prompt, max_tokens=8, top_k=0, seed=s, stop=stop,
                                        cache=False, extra={"top_k": 3})
                      for s in sample_seeds(11, 4)]
            return res, plain, top3, plain3

    res, plain, top3, plain3 = asyncio.run(go())
    assert res.texts == [p.text for p in plain]
    assert top3.texts == [p.text for p in plain3] != res.texts
    assert len(set(res.texts)) > 1  # N different samples
    assert res.scores == [float(len(t)) for t in res.texts]
    assert res.index == max(range(4), key=lambda i: (res.scores[i], -i))
    assert res.text == res.texts[res.index] and res.score == max(res.scores)
    u = res.usage
    assert u.upstream_calls == 4 and u.cache_hits == 0
    assert u.upstream_completion_tokens == sum(p.completion_tokens for p in plain)
    assert u.upstream_prompt_tokens == sum(p.prompt_tokens for p in plain)
    assert u.completion_tokens == plain[res.index].completion_tokens


# ---------------------------------------------------------------------- the service

@pytest.fixture(scope="module")
def service(upstream, chat_template):
    engine = Engine(UpstreamClient(upstream.base_url, upstream.model),
                    {"h": CallableValue(char_hash, "h")}, defaults=Guidance(beta=1.0),
                    eos_texts=chat_template.stop_strings)
    rewards = {name: load_reward(spec) for name, spec in
               parse_reward_specs([f"len={LENGTH}", "vader"]).items()}
    app = create_app(Runtime(engine, chat_template, upstream.model, upstream.base_url,
                             rewards=rewards))
    with serve_app(app) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0), upstream.model


def test_service_best_of(service):
    sdk, model = service
    r = sdk.completions.create(model=model, prompt="My favourite animal is", max_tokens=8,
                               seed=3, extra_body={"vas": {"best_of": 3, "reward": "len"}})
    choice = r.choices[0]
    info = choice.model_extra["vas_best_of"]
    assert info["n"] == 3 and info["reward"] == "len" and len(info["scores"]) == 3
    assert info["scores"][info["chosen"]] == max(info["scores"]) == len(choice.text)
    vas = r.usage.model_extra["vas"]
    assert vas["upstream_calls"] + vas["cache_hits"] == 3
    assert vas["upstream_completion_tokens"] >= r.usage.completion_tokens
    # streaming gives the same answer (all N samples first, then one chunk)
    text = "".join(c.choices[0].text for c in sdk.completions.create(
        model=model, prompt="My favourite animal is", max_tokens=8, seed=3, stream=True,
        extra_body={"vas": {"best_of": 3, "reward": "len"}}) if c.choices)
    assert text == choice.text


@pytest.mark.parametrize("vas, match", [
    ({"best_of": 2, "reward": "nope"}, "loaded: len, vader"),
    ({"best_of": 2, "reward": "py:os:system"}, "loaded: len, vader"),
    ({"best_of": 2, "reward": "hf:/tmp"}, "only name a reward the server loaded"),
    ({"best_of": 2}, "needs vas.reward"),
    ({"best_of": 0, "reward": "len"}, "vas.best_of must be an integer"),
    ({"reward": "len"}, "only used with vas.best_of"),
    ({"best_of": 2, "reward": "len", "trace": True}, "not available with vas.best_of"),
])
def test_service_best_of_errors(service, vas, match):
    sdk, model = service
    with pytest.raises(openai.BadRequestError, match=match) as info:
        sdk.completions.create(model=model, prompt="Hi", max_tokens=2,
                               extra_body={"vas": vas})
    assert info.value.status_code == 400


def test_wrap_best_of_chat(upstream):
    client = openai.OpenAI(base_url=upstream.base_url, api_key="sk", max_retries=0)
    g = vas_proxy.wrap(client, values={"h": "py:valuefns:char_hash"},
                       rewards={"len": LENGTH}, chat_template=str(smollm2_gguf()))
    r = g.chat.completions.create(model=upstream.model, max_tokens=6, seed=2,
                                  messages=[{"role": "user", "content": "Say hi."}],
                                  extra_body={"vas": {"best_of": 2}})  # the only reward
    info = r.choices[0].model_extra["vas_best_of"]
    assert info["reward"] == "len" and len(r.choices[0].message.content) == max(info["scores"])
    assert r.usage.model_extra["vas"]["upstream_calls"] == 2


def test_reward_specs_parse():
    assert parse_reward_specs(["vader", "len=py:m:f", "hf:/x?pair=1", "c=hf:/y?pair=1"]) == {
        "vader": "vader", "len": "py:m:f", "hf:/x?pair=1": "hf:/x?pair=1", "c": "hf:/y?pair=1"}
    with pytest.raises(vas_proxy.errors.ConfigError, match="given twice"):
        parse_reward_specs(["vader", "vader"])


def _vllm_n(calls: list[dict]):
    """A replay of vLLM's /v1/completions answer to `n` (documented shape: n choices with
    index 0..n-1, one usage with the prompt counted once); texts depend on the seed."""
    import httpx2 as httpx
    import json

    def handler(request):
        body = json.loads(request.content)
        calls.append(body)
        n = body.get("n", 1)
        texts = [f"s{body['seed'] % 97}-{i}" + "x" * i for i in range(n)]
        return httpx.Response(200, json={
            "id": "cmpl-1", "object": "text_completion", "model": body["model"],
            "choices": [{"index": i, "text": t, "logprobs": None, "finish_reason": "length"}
                        for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5 * n,
                      "total_tokens": 10 + 5 * n}})
    return httpx.MockTransport(handler)


def test_best_of_asks_an_upstream_that_takes_n_once():
    """vLLM-like profiles: the N samples come from one call with `n`, the prompt billed once;
    the same seed gives the same samples. A profile without `n` makes N calls."""
    async def go(profile: str, seed: int):
        calls: list[dict] = []
        async with UpstreamClient("http://fake/v1", "m", profile=profile, use_cache=False,
                                  transport=_vllm_n(calls)) as up:
            res = await best_of_n(up, "Q:", n=4, reward=length_reward, reward_prompt="Q",
                                  max_tokens=5, seed=seed)
        return res, calls

    res, calls = asyncio.run(go("vllm", 3))
    assert len(calls) == 1 and calls[0]["n"] == 4
    assert res.usage.upstream_calls == 1 and res.usage.upstream_prompt_tokens == 10
    assert res.usage.upstream_completion_tokens == 20 and res.usage.completion_tokens == 5
    assert res.index == 3 and res.text == res.texts[3] and len(set(res.texts)) == 4
    again, _ = asyncio.run(go("vllm", 3))
    assert again.texts == res.texts
    other, calls = asyncio.run(go("llamacpp", 3))
    assert len(calls) == 4 and all("n" not in c for c in calls)
    assert other.usage.upstream_prompt_tokens == 40
