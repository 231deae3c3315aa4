"""llama.cpp's C++ server (`llama-server`, two slots) as a real upstream: its samples follow
its reported logprobs, the guided loop is exact on it through token-id prompts, chat prefill
continues without a local template, and an answer ends only on the real end token (the ""
collision of llama-cpp-python's legacy shape cannot happen: ids and bytes are reported)."""

from __future__ import annotations

import asyncio

import numpy as np
import openai
import pytest
from scipy import stats

import vas_proxy
from vas_proxy.engine import Engine, GenerationRequest
from vas_proxy.errors import ConfigError
from vas_proxy.guidance import Guidance
from vas_proxy.prompting import PromptBuilder
from vas_proxy.sampling import combine_values, target_probs
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.upstream.continuation import ChatPrompt, TokenPrompt
from vas_proxy.templates import from_props
from vas_proxy.values.loader import load_value

HELLO = [{"role": "user", "content": "Say hello in five words."}]


def run(coro):
    return asyncio.run(coro)


def client(up, **kw) -> UpstreamClient:
    return UpstreamClient(up.base_url, up.model, profile=up.profile, use_cache=False, **kw)


def pvalue(counts: dict, probs: dict, n: int) -> float:
    """Chi-square of counts vs probs (keys: token ids), bins with expected < 5 pooled."""
    keys = list(probs)
    obs = np.array([counts.get(k, 0) for k in keys], float)
    exp = np.array([probs[k] for k in keys]) * n
    big = exp >= 5
    o = np.append(obs[big], n - obs[big].sum())
    e = np.append(exp[big], n - exp[big].sum())
    return stats.chisquare(o, e).pvalue


async def _prompt(c: UpstreamClient):
    template = (await c.props())["chat_template"]
    assert "im_start" in template  # its own template, read from /props
    text = await c.apply_template(HELLO)
    return TokenPrompt(tuple(await c.tokenize(text)), text)


def test_its_samples_follow_its_reported_logprobs(llama_server):
    """With the profile's sampler params, 400 one-token samples at temperature 1 match the
    reported top-20 (fixed seeds 0..399; p > 0.001, a false alarm once in a thousand). A
    sample that stops inside a character comes back without logprobs (the profile's
    `partial_sample_drops_logprobs`): counted as the pieces-of-a-character bin."""
    async def go():
        async with client(llama_server) as c:
            p = await _prompt(c)
            ref = (await c.complete(list(p.ids), max_tokens=1, top_k=20, seed=0)).positions[0]
            counts: dict = {}
            for s in range(400):
                res = await c.complete(list(p.ids), max_tokens=1, top_k=20, seed=s)
                key = res.positions[0].sampled.id if res.positions else "held"
                counts[key] = counts.get(key, 0) + 1
            return ref, counts
    ref, counts = run(go())
    probs: dict = {}
    for c in ref.candidates:
        key = "held" if c.partial_utf8 else c.id
        probs[key] = probs.get(key, 0.0) + float(np.exp(c.logprob))
    assert "held" in probs  # the first position's top-20 holds a piece of an emoji
    assert all(c.id is not None and c.raw is not None for c in ref.candidates)
    assert pvalue(counts, probs, 400) > 1e-3


def test_guided_drafts_on_token_prompts_are_exact(llama_server):
    """beta 2 with 3-token drafts (the upstream's own samples, speculative acceptance): the
    first token's distribution is the target q (300 seeds, p > 0.001)."""
    value = load_value("py:valuefns:char_hash", name="h")

    async def go():
        async with client(llama_server) as c:
            p = await _prompt(c)
            eng = Engine(c, {"h": value}, defaults=Guidance(beta=2.0, top_k=10, speculate=3))
            g = eng.resolve(None)
            counts: dict = {}
            for s in range(300):
                gen = await eng.generate(GenerationRequest(prompt=p.text, upstream_prompt=p,
                                                           max_tokens=2, seed=s, guidance=g))
                first = gen.tokens[0].candidates[int(np.argmax(
                    [c.bytes == gen.tokens[0].token for c in gen.tokens[0].candidates]))]
                counts[first.id] = counts.get(first.id, 0) + 1
            ref = (await c.complete(list(p.ids), max_tokens=1, top_k=10, seed=0)).positions[0]
            return ref, counts, gen.usage, p
    ref, counts, usage, p = run(go())
    cands = ref.candidates
    vals = value.score(p.text, "", [c.bytes.decode("utf-8", "ignore") for c in cands])
    v = combine_values({"h": vals}, {"h": 1.0}, len(cands))
    q = target_probs([c.logprob for c in cands], v, 2.0, 1.0)
    assert usage.draft_trials > 0  # the drafts were put to the test
    assert pvalue(counts, {c.id: float(x) for c, x in zip(cands, q)}, 300) > 1e-3


def test_every_token_is_reachable_and_only_the_end_token_ends(llama_server):
    """The first position's top-20 holds a piece of an emoji (b"\\xf0\\x9f", ~5 %): through
    token ids it is chosen, the next token completes the character, and no answer is empty
    or ends before its real end token (fixed seeds 0..199, beta 0)."""
    async def go():
        async with client(llama_server) as c:
            p = await _prompt(c)
            eng = Engine(c, {}, defaults=Guidance(beta=0.0, speculate=0))
            return [await eng.generate(GenerationRequest(prompt=p.text, upstream_prompt=p,
                                                         max_tokens=3, seed=s))
                    for s in range(200)]
    gens = run(go())
    partial = [g for g in gens if g.tokens and g.tokens[0].token == b"\xf0\x9f"]
    assert partial, "no answer started with the emoji's first bytes in 200 draws"
    assert all(g.text and "\ufffd" not in g.text for g in partial)
    for g in gens:
        assert g.text, "an empty answer"
        if g.finish_reason == "stop":
            assert g.tokens[-1].candidates and g.tokens[-1].token == b""
            end = [c for c in g.tokens[-1].candidates if c.bytes == b""]
            assert end and all(c.special for c in end)
    assert sum(g.usage.ambiguous_ends for g in gens) == 0
    assert sum(g.usage.unreachable_mass for g in gens) == 0.0


def test_chat_prefill_continues_where_token_ids_do(llama_server):
    """The same partial answer continued through the chat route (its own template, a trailing
    assistant message) and through token ids: the same next-token distribution (the chat
    route re-tokenises the prefill, which here splits as the ids did)."""
    async def go():
        async with client(llama_server) as c:
            text = await c.apply_template(HELLO) + "Hello"
            ids = await c.tokenize(text)
            by_ids = await c.complete(ids, max_tokens=1, top_k=5, seed=1)
            by_chat = await c.complete(ChatPrompt(tuple(HELLO), "Hello"), max_tokens=1,
                                       top_k=5, seed=1)
            return by_ids, by_chat
    by_ids, by_chat = run(go())
    a, b = by_ids.positions[0].candidates, by_chat.positions[0].candidates
    assert [c.id for c in a] == [c.id for c in b]
    assert np.allclose([c.logprob for c in a], [c.logprob for c in b], atol=0.05)
    assert not by_chat.text.startswith("Hello")  # the echoed prefill is stripped


def test_auto_picks_tokens_in_either_template_and_says_what_would_work(llama_server, upstream):
    """auto takes token ids on llama-server with a template known here and without one (then
    in the server's own template, /apply-template); chat prefill is there when asked for; a
    completions-only upstream without a template is refused with the options that would work."""
    async def go():
        async with client(llama_server) as c, client(upstream) as legacy:
            own = await PromptBuilder(c, None).chat(HELLO)  # no template here: the server's
            tpl = from_props(await c.props())
            ours = await PromptBuilder(c, tpl).chat(HELLO)
            chat = await PromptBuilder(c, None, "chat").chat(HELLO)
            with pytest.raises(ConfigError, match="--chat-template"):
                await PromptBuilder(legacy, None).chat(HELLO)
            with pytest.raises(ConfigError, match="cannot continue through 'chat'"):
                PromptBuilder(legacy, None, "chat")
            return own, ours, chat
    own, ours, chat = run(go())
    assert (own.strategy, ours.strategy, chat.strategy) == ("tokens", "tokens", "chat")
    # with its template the upstream's own rendering (SmolLM2 adds its system turn) is what
    # the value models read; without one they read the chatml view of the messages, while the
    # ids are still the server's own template's, so both send the same ids
    assert ours.text.startswith("<|im_start|>system\nYou are a helpful AI assistant")
    assert own.text.startswith("<|im_start|>user\nSay hello")
    assert list(own.upstream.ids) == list(ours.upstream.ids)
    assert list(ours.upstream.ids)[:1] == [1]  # <|im_start|> parsed as the special token
    assert chat.text.startswith("<|im_start|>user\nSay hello") and chat.upstream.prefill == ""


@pytest.fixture(scope="module")
def guided(llama_server):
    c = openai.OpenAI(base_url=llama_server.base_url, api_key="sk-none", max_retries=0)
    g = vas_proxy.wrap(c, values={"h": "py:valuefns:char_hash"}, beta=1.0,
                       provider="llama-server")  # no chat template
    yield g
    g.close()


def test_wrap_chat_without_a_template_streamed_and_not(guided, llama_server):
    kw = dict(model=llama_server.model, messages=HELLO, max_tokens=8, seed=2)
    a = guided.chat.completions.create(**kw)
    b = guided.chat.completions.create(**kw, stream=True)
    streamed = "".join(ch.choices[0].delta.content or "" for ch in b if ch.choices)
    assert a.choices[0].message.content and streamed == a.choices[0].message.content
    assert a.usage.model_extra["vas"]["upstream_calls"] >= 1
    prefilled = guided.chat.completions.create(
        model=llama_server.model, max_tokens=4, seed=2,
        messages=[*HELLO, {"role": "assistant", "content": "Hello there"}])
    assert prefilled.choices[0].message.content  # continued, not refused


def test_generate_on_a_separately_started_server_needs_no_template(llama_server):
    """`vas-proxy generate` pointed at llama-server with no --chat-template: its own template
    (from /props) and token-id prompts; the same seed, the same answer."""
    import subprocess
    import sys
    from pathlib import Path

    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parent)}
    args = [sys.executable, "-m", "vas_proxy", "generate", "Name a colour.", "--upstream",
            llama_server.base_url, "--provider", "llama-server", "--value",
            "h=py:valuefns:char_hash", "--beta", "1", "--max-tokens", "8", "--seed", "3"]
    runs = [subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert runs[0].stdout.strip() and runs[0].stdout == runs[1].stdout


def test_eval_continues_through_token_ids_as_serve_does(llama_server, tmp_path):
    """eval prepares prompts as serve does: on llama-server the loop at β = 0 runs on token
    ids, so its target is exactly the upstream's top-k (KL 0) with every token reachable, and
    Best-of-1 samples the same ids. Through text (what eval did before) the first position of
    this prompt alone loses ~5 % of its mass to pieces of an emoji, in every answer."""
    import json

    from vas_proxy.cli import main

    prompts = tmp_path / "hello.jsonl"
    prompts.write_text(json.dumps({"messages": HELLO}) + "\n")
    out = tmp_path / "eval"
    rc = main(["eval", "--prompts", str(prompts), "--upstream", llama_server.base_url,
               "--provider", "llama-server", "--reward", "vader", "--value",
               "h=py:valuefns:char_hash", "--beta", "0", "--best-of", "1", "--samples", "6",
               "--max-tokens", "4", "--prices", "flat", "--out", str(out), "--quiet"])
    assert rc == 0
    config = json.loads((out / "eval.json").read_text())
    assert config["continuation"] == "auto" and config["embedded"] is None
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    base = [r for r in records if r["setting"] == "base"]
    bon = [r for r in records if r["setting"] == "bon N=1 vader"]
    assert len(base) == len(bon) == 6
    assert all(r["kl"] == 0.0 and r["unreachable_mass"] == 0.0 for r in base)
    # both sent the same prompt: its token count is the first call's prompt_tokens
    assert {r["calls"][0][0] for r in base} == {r["calls"][0][0] for r in bon}
