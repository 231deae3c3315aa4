"""`Engine.stream` against an in-process scripted upstream: no llama.cpp, no sockets. The fake
answers /v1/completions through an httpx MockTransport inside the real `UpstreamClient`, so the
engine sees exactly what the client parses. Covers speculation bookkeeping and exactness, stop
strings, UTF-8 splits and the end-of-turn retry; the file runs in seconds."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable

import httpx2 as httpx
import numpy as np
import pytest
from scipy import stats

from vas_proxy import sampling
from vas_proxy.engine import Engine, GenerationRequest, Outcome
from vas_proxy.guidance import Guidance
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.values.callable import CallableValue

PROMPT = "P:"
EOS = b"<|im_end|>"
ALPHA = 1e-3  # significance level of the distribution checks (their seeds are fixed)


class ScriptedUpstream:
    """/v1/completions over a scripted LM: `dist(response_bytes) -> {token: prob}` is the full
    next-token distribution. It reports the `logprobs` most likely tokens per position and, like
    llama.cpp, draws its own token at each position (greedy at temperature 0, else from `dist`
    with the request's seed) and continues from it; sampling EOS ends its answer *before* that
    position, so EOS first means no position at all.

    `drafts` (optional) scripts the drafted tokens of multi-token calls instead: one list per
    call of "ok" (the greedy token), "near" (the second most likely) or "far" (the least likely,
    outside the reported top-k). `empty` answers the next that many calls with no position;
    `empty_after` every call once the response has that many bytes; `sample_eos=False` never
    draws EOS itself (so a position where EOS is the best candidate is reported). `shape` is
    "legacy" (text→logprob dicts, llama.cpp) or "chat" (lists with token bytes).
    """

    def __init__(self, dist: Callable[[bytes], dict[bytes, float]], *, shape: str = "legacy",
                 drafts: list[list[str]] | None = None, empty: int = 0,
                 empty_after: int | None = None, sample_eos: bool = True):
        self.dist, self.shape = dist, shape
        self.drafts = list(drafts or [])
        self.empty, self.empty_after, self.sample_eos = empty, empty_after, sample_eos
        self.calls: list[dict] = []
        self.streamed = 0

    def client(self) -> UpstreamClient:
        return UpstreamClient("http://fake/v1", "fake", use_cache=False,
                              transport=httpx.MockTransport(self.handler))

    def _positions(self, context: bytes, n: int, temperature: float, seed: int
                   ) -> list[tuple[bytes, list[tuple[bytes, float]]]]:
        rng = np.random.default_rng(seed)
        script = self.drafts.pop(0) if n > 1 and self.drafts else None
        out = []
        for j in range(n):
            probs = self.dist(context)
            ranked = sorted(probs, key=lambda t: -probs[t])
            if script is not None:
                token = {"ok": ranked[0], "near": ranked[1], "far": ranked[-1]}[script[j]]
            elif temperature == 0:
                token = ranked[0]
            else:
                toks = [t for t in probs if self.sample_eos or t != EOS]
                w = np.array([probs[t] for t in toks])
                token = toks[int(rng.choice(len(toks), p=w / w.sum()))]
            if token == EOS:
                break
            out.append((token, [(t, float(np.log(probs[t]))) for t in ranked]))
            context += token
        return out

    async def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.calls.append(body)
        context = body["prompt"].encode()[len(PROMPT):]
        k, n = body["logprobs"], body["max_tokens"]
        if self.empty_after is not None and len(context) >= self.empty_after:
            self.empty = 10**9
        if self.empty:
            self.empty -= 1
            positions = []
        else:
            positions = self._positions(context, n, body["temperature"], body["seed"])
        if self.shape == "chat":
            def entry(t: bytes, lp: float) -> dict:
                return {"token": t.decode("utf-8", "replace"), "logprob": lp, "bytes": list(t)}
            logprobs = {"content": [{**entry(tok, dict(top)[tok]),
                                     "top_logprobs": [entry(t, lp) for t, lp in top[:k]]}
                                    for tok, top in positions]}
        else:
            logprobs = {"tokens": [tok.decode() for tok, _ in positions],
                        "token_logprobs": [dict(top)[tok] for tok, top in positions],
                        "top_logprobs": [{t.decode(): lp for t, lp in top[:k]}
                                         for _, top in positions]}
        text = b"".join(tok for tok, _ in positions).decode("utf-8", "replace")
        finish = "length" if len(positions) == n else "stop"
        if body.get("stream"):  # one chunk per position, no usage (as llama-cpp-python)
            chunks = []
            for i, (tok, top) in enumerate(positions):
                lp = ({"content": [logprobs["content"][i]]} if self.shape == "chat" else
                      {key: [logprobs[key][i]] for key in
                       ("tokens", "token_logprobs", "top_logprobs")})
                chunks.append({"choices": [{"text": tok.decode("utf-8", "replace"),
                                            "index": 0, "logprobs": lp,
                                            "finish_reason": None}]})
            chunks.append({"choices": [{"text": "", "index": 0, "logprobs": None,
                                        "finish_reason": finish}]})
            self.streamed += 1
            sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return httpx.Response(200, content=sse.encode(),
                                  headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={
            "choices": [{"text": text, "index": 0, "logprobs": logprobs,
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": len(positions)}})


def sequence(*tokens: bytes) -> Callable[[bytes], dict[bytes, float]]:
    """A peaked LM that spells `tokens`, then EOS; each step also offers three unlikely tokens.
    Off the script (after a wrong draft) it goes on with the unlikely ones, never EOS."""
    prefixes = [b"".join(tokens[:i]) for i in range(len(tokens) + 1)]

    def dist(context: bytes) -> dict[bytes, float]:
        if context not in prefixes:
            return {b"x": 0.9, b"y": 0.06, b"z": 0.04}
        i = prefixes.index(context)
        nxt = tokens[i] if i < len(tokens) else EOS
        probs = {b"x": 0.01, b"y": 0.006, b"z": 0.004}
        probs[nxt] = 1.0 - sum(probs.values())
        return probs
    return dist


VOCAB = [b"a", b"b", b"c", b"d", b"e"]


def spread(context: bytes) -> dict[bytes, float]:
    """A spread-out LM whose next token depends on the last one (no EOS)."""
    z = np.random.default_rng(context[-1:][0] if context else 7).normal(0.0, 1.0, len(VOCAB))
    p = np.exp(z) / np.exp(z).sum()
    return dict(zip(VOCAB, p.tolist()))


TILT = {"a": 0.0, "b": 1.5, "c": -1.0, "d": 0.5, "e": 2.0}


def tilt(prompt: str, continuations: list[str]) -> list[float]:
    return [TILT.get(c[-1:], 0.0) for c in continuations]


def engine(fake: ScriptedUpstream, values=None, **guidance) -> Engine:
    guidance = {"top_k": 3, "speculate": 0, **guidance}  # the scripted LMs offer 4 tokens
    return Engine(fake.client(), values or {}, defaults=Guidance(**guidance),
                  eos_texts=[EOS.decode()])


def events(eng: Engine, **req):
    """All TokenEvents of one streamed generation, and its Outcome."""
    req.setdefault("seed", 0)
    req.setdefault("guidance", eng.resolve(None))  # else GenerationRequest's own Guidance()

    async def go():
        outcome = Outcome()
        try:
            req_ = GenerationRequest(prompt=PROMPT, **req)
            evs = [ev async for ev in eng.stream(req_, outcome)]
        finally:
            await eng.upstream.aclose()
        return evs, outcome
    return asyncio.run(go())


# ---- speculation: bookkeeping --------------------------------------------------------------

def test_speculation_bookkeeping_is_exact():
    """Greedy target (temperature 0): a draft equal to the argmax is accepted, any other draft
    (in the top-k or outside it) rejected, so every count is known in advance."""
    lm = sequence(b"H", b"e", b"l", b"l", b"o", b"!", b"?", b".")
    fake = ScriptedUpstream(lm, drafts=[["ok", "ok", "near"], ["far", "ok", "ok"],
                                        ["ok", "ok", "ok"]])
    evs, out = events(engine(fake, beta=0.0, top_k=3, speculate=3), max_tokens=7,
                      temperature=0.0, seed=1)
    u = out.usage
    assert "".join(e.text for e in evs) == "Hello!?"
    assert out.finish_reason == "length" and u.completion_tokens == 7
    # call 1: 2 accepted, the third replaced (3 tokens); call 2: rejected at once (1 token);
    # call 3: 3 accepted. Billed but not kept: 1 + 3 + 0.
    assert [c["max_tokens"] for c in fake.calls] == [3, 3, 3]
    assert (u.upstream_calls, u.draft_trials, u.drafts_accepted) == (3, 7, 5)
    assert u.rejected_draft_tokens == 4
    assert u.upstream_completion_tokens == 9 and u.cache_hits == 0
    assert u.upstream_prompt_tokens == sum(len(c["prompt"]) for c in fake.calls)


def test_no_speculation_is_one_call_per_token():
    fake = ScriptedUpstream(sequence(b"H", b"i", b"!"))
    evs, out = events(engine(fake, beta=0.0, speculate=0), max_tokens=2, temperature=0.0)
    assert "".join(e.text for e in evs) == "Hi" and out.finish_reason == "length"
    assert [c["max_tokens"] for c in fake.calls] == [1, 1]
    u = out.usage
    assert (u.upstream_calls, u.draft_trials, u.drafts_accepted,
            u.rejected_draft_tokens) == (2, 0, 0, 0)


# ---- speculation: the output distribution -----------------------------------------------------

TOP_K = 4  # of 5 tokens: one is always outside the top-k (drafts of it are never accepted)
BETA = 1.0
N = 600  # the wrong rule's non-centrality is then ≈ 73: power ≈ 0.9996 at ALPHA


def _target_pairs() -> dict[bytes, float]:
    """P(first two tokens) under the docs/design.md §1 target, computed here from `spread` and
    `tilt` (independently of the engine): q ∝ p·exp(beta·V) over the top-k, per position."""
    def q(context: bytes):
        probs = spread(context)
        top = sorted(probs, key=lambda t: -probs[t])[:TOP_K]
        lp = np.log([probs[t] for t in top])
        v = np.array(tilt(PROMPT, [(context + t).decode() for t in top]))
        w = np.exp(lp + BETA * (v - v.mean()))
        return dict(zip(top, w / w.sum()))
    return {a + b: qa * qb for a, qa in q(b"").items() for b, qb in q(a).items()}


def _pairs(speculate: int) -> tuple[list[bytes], int]:
    fake = ScriptedUpstream(spread)
    eng = engine(fake, {"v": CallableValue(tilt, "v")}, beta=BETA, top_k=TOP_K,
                 speculate=speculate)

    async def go():
        g = eng.resolve(None)
        try:
            outs = []
            for s in range(N):
                r = await eng.generate(GenerationRequest(prompt=PROMPT, max_tokens=2, seed=s,
                                                         guidance=g))
                outs.append(b"".join(t.token for t in r.tokens))
            return outs
        finally:
            await eng.upstream.aclose()
    return asyncio.run(go()), len(fake.calls)


def _pvalue(samples: list[bytes], probs: dict[bytes, float]) -> float:
    """Chi-square of the sampled pairs against `probs`; cells expected < 5 pooled."""
    assert set(samples) <= set(probs), "a token outside the top-k was emitted"
    counts = Counter(samples)
    cells = sorted(probs)
    obs = np.array([counts[c] for c in cells], float)
    exp = np.array([probs[c] for c in cells]) * len(samples)
    big = exp >= 5
    obs, exp = np.append(obs[big], obs[~big].sum()), np.append(exp[big], exp[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(stats.chisquare(obs, exp).pvalue)


@pytest.fixture(scope="module")
def target():
    return _target_pairs()


@pytest.mark.parametrize("speculate", [0, 2])
def test_two_token_output_follows_the_target(target, speculate):
    """With and without speculation, the (first, second) token pair follows the target; with
    drafts, fewer calls than tokens were made."""
    samples, calls = _pairs(speculate)
    assert _pvalue(samples, target) > ALPHA
    assert calls == 2 * N if speculate == 0 else calls < 2 * N


def test_a_wrong_acceptance_rule_is_caught(target, monkeypatch):
    """Power: resampling from q (instead of the residual) after a rejection skews the output,
    and the same check rejects it."""
    def wrong(q, d, draft, rng):
        if draft is not None and rng.random() < min(1.0, q[draft] / d[draft]):
            return True, draft
        return False, sampling.sample_index(q, rng)

    monkeypatch.setattr(sampling, "speculative_accept", wrong)
    samples, _ = _pairs(2)
    assert _pvalue(samples, target) < ALPHA


# ---- stop strings ----------------------------------------------------------------------------

def test_stop_string_is_cut_and_never_streamed():
    """A stop string spread over tokens: what could still become it is held back, so the
    stream never shows its first part ('o' of "o w") before knowing."""
    fake = ScriptedUpstream(sequence(b"Hel", b"lo", b" wo", b"rld"))
    evs, out = events(engine(fake, beta=0.0), max_tokens=10, temperature=0.0, stop=["o w"])
    assert [e.text for e in evs] == ["Hel", "l", ""]
    assert out.finish_reason == "stop" and len(fake.calls) == 3


def test_held_back_text_is_released_when_the_stop_does_not_come():
    fake = ScriptedUpstream(sequence(b"Hel", b"lo", b" wo", b"rld"))
    evs, out = events(engine(fake, beta=0.0), max_tokens=4, temperature=0.0, stop=["lo!"])
    assert [e.text for e in evs] == ["He", "l", "lo wo", "rld"]  # the last one is final
    assert out.finish_reason == "length"


def test_stop_inside_one_token_and_at_the_end_of_the_turn():
    fake = ScriptedUpstream(sequence(b"Hi", b" there!", b" Bye"))
    evs, out = events(engine(fake, beta=0.0), max_tokens=10, temperature=0.0, stop=["re!"])
    assert "".join(e.text for e in evs) == "Hi the" and out.finish_reason == "stop"
    # A held-back prefix is released when the turn ends (here by the EOS candidate).
    fake = ScriptedUpstream(sequence(b"Hi", b" there"), sample_eos=False)
    evs, out = events(engine(fake, beta=0.0), max_tokens=10, temperature=0.0, stop=["e!"])
    assert [e.text for e in evs] == ["Hi", " ther", "e"] and evs[-1].token == EOS
    assert out.finish_reason == "stop"


# ---- UTF-8 -----------------------------------------------------------------------------------

# The split falls inside one upstream answer (a drafted chunk). Across two calls it cannot be
# continued yet: the next prompt is the response *text*, which cannot end in half a character
# (token-id prompts, a declared profile capability, are what will carry it).

def test_a_character_split_over_two_tokens_comes_out_whole():
    """'é' is b"\\xc3\\xa9": its two bytes arrive as two tokens (the chat logprob shape carries
    token bytes). Nothing is emitted for the first half, the whole character with the second."""
    fake = ScriptedUpstream(sequence(b"caf", b"\xc3", b"\xa9", b"!"), shape="chat")
    evs, out = events(engine(fake, beta=0.0, speculate=3), max_tokens=4, temperature=0.0)
    assert [e.token for e in evs] == [b"caf", b"\xc3", b"\xa9", b"!"]
    assert [e.text for e in evs] == ["caf", "", "é", "!"]
    assert not any("\ufffd" in e.text for e in evs)


def test_a_stop_string_ending_in_a_split_character_is_found():
    fake = ScriptedUpstream(sequence(b"a", b"\xe2\x82", b"\xac", b"b"), shape="chat")
    evs, out = events(engine(fake, beta=0.0, speculate=4), max_tokens=4, temperature=0.0,
                      stop=["€b"])
    assert [e.text for e in evs] == ["a", "", "", ""]
    assert out.finish_reason == "stop"


# ---- the end-of-turn retry -------------------------------------------------------------------

def test_an_answer_without_position_is_retried_with_a_new_seed():
    """llama.cpp answers with no position when it samples its end token: asked again (with
    another upstream seed) up to EOS_RETRIES times, the turn goes on."""
    fake = ScriptedUpstream(sequence(b"O", b"K", b"!"), empty=Engine.EOS_RETRIES)
    evs, out = events(engine(fake, beta=0.0, speculate=0), max_tokens=2, temperature=0.0,
                      seed=5)
    assert "".join(e.text for e in evs) == "OK" and out.finish_reason == "length"
    first = fake.calls[:Engine.EOS_RETRIES + 1]
    assert len(fake.calls) == Engine.EOS_RETRIES + 2
    # the first asks for one token, the retries for a few (a sample may begin a character)
    assert [c["max_tokens"] for c in first] == [1] + [Engine.RETRY_TOKENS] * Engine.EOS_RETRIES
    assert all(c["prompt"] == PROMPT for c in first)
    assert len({c["seed"] for c in first}) == len(first)  # a new upstream seed each time
    assert out.usage.upstream_calls == len(fake.calls)


@pytest.mark.parametrize("speculate", [0, 2])
def test_too_many_answers_without_position_end_the_turn(speculate):
    """After 1 + EOS_RETRIES empty answers in a row the turn has ended: finish_reason "stop",
    the text so far kept (a held-back stop prefix included)."""
    fake = ScriptedUpstream(sequence(b"Hi", b"!", b"?"), drafts=[["ok", "ok"]], empty_after=3)
    evs, out = events(engine(fake, beta=0.0, speculate=speculate), max_tokens=10,
                      temperature=0.0, stop=["!!"])
    assert "".join(e.text for e in evs) == "Hi!" and out.finish_reason == "stop"
    assert evs[-1].token == b"" and evs[-1].text == "!"  # the held-back tail, flushed
    tail = fake.calls[-(Engine.EOS_RETRIES + 1):]
    assert [c["max_tokens"] for c in tail] == [1] + [Engine.RETRY_TOKENS] * Engine.EOS_RETRIES
    assert all(c["prompt"] == PROMPT + "Hi!" for c in tail)
    draft_call = 1 if speculate else 0
    before = 1 if speculate else 2  # calls that produced "Hi" and "!"
    assert len(fake.calls) == before + draft_call + Engine.EOS_RETRIES + 1


# ---- batched scoring of drafted positions, the speculation default ---------------------------

def _counting_value():
    """A value of the whole continuation (so a wrong draft prefix shows), counting its calls."""
    calls = []

    def fn(prompt: str, continuations: list[str]) -> list[float]:
        calls.append(len(continuations))
        return [c.count("e") - 0.5 * c.count("c") + 0.25 * c.count("b") for c in continuations]
    return CallableValue(fn, "count"), calls


@pytest.mark.parametrize("shape", ["legacy", "chat"])
def test_batched_draft_scoring_gives_the_very_same_output(shape):
    """Scoring all of a chunk's drafted positions in one call (position i's strings carry the
    drafts before it) gives the values of scoring them one by one, so the same tokens, the same
    trace and the same bookkeeping, with fewer scoring calls."""
    runs = {}
    for batch in (False, True):
        value, calls = _counting_value()
        outs = []
        for seed in range(12):
            fake = ScriptedUpstream(spread, shape=shape)
            eng = Engine(fake.client(), {"v": value},
                         defaults=Guidance(beta=1.5, top_k=4, speculate=3, trace=True),
                         batch_drafts=batch)
            evs, out = events(eng, max_tokens=9, seed=seed)
            outs.append(([e.token for e in evs], [e.trace for e in evs],
                         (out.usage.draft_trials, out.usage.drafts_accepted,
                          out.usage.rejected_draft_tokens)))
        runs[batch] = outs, calls
    (seq, seq_calls), (bat, bat_calls) = runs[False], runs[True]
    for (tok_a, tr_a, book_a), (tok_b, tr_b, book_b) in zip(seq, bat):
        assert tok_a == tok_b and book_a == book_b
        for a, b in zip(tr_a, tr_b):
            assert [c["value"] for c in a["candidates"]] == pytest.approx(
                [c["value"] for c in b["candidates"]], abs=1e-12)
    assert len(bat_calls) < len(seq_calls)
    assert max(bat_calls) > 4  # some call scored several positions' candidates at once


def test_speculation_default_is_the_profiles():
    """Adaptive where the profile's drafts are the upstream's exact samples, else one token per
    call; an explicit choice is kept."""
    def eng(profile, **g):
        client = UpstreamClient("http://fake/v1", "m", profile=profile, use_cache=False)
        return Engine(client, {}, defaults=Guidance(**g)).defaults.speculate
    assert eng("llamacpp") == -1 and eng("vllm") == -1
    assert eng("openai-completions") == 0 and eng("sglang") == 0
    assert eng("llamacpp", speculate=0) == 0 and eng("openai-completions", speculate=4) == 4


@pytest.mark.parametrize("shape", ["legacy", "chat"])
def test_streamed_drafts_give_the_very_same_output(shape):
    """Reading drafted calls as streams (scoring each position as it arrives, cancelling at a
    rejection) gives the tokens and acceptance decisions of whole calls: the same seeds, the
    same reported positions. The output being a function of the seed and the positions, this
    makes the streamed loop exactly the whole-call loop, whose distribution the chi-square
    tests above check. Its bill counts the positions read; the prompt, which the stream
    does not report, is estimated as the first call's plus the tokens since."""
    runs = {}
    for overlap in (False, True):
        value, _ = _counting_value()
        outs = []
        streamed = 0
        for seed in range(12):
            fake = ScriptedUpstream(spread, shape=shape)
            eng = Engine(fake.client(), {"v": value},
                         defaults=Guidance(beta=1.5, top_k=4, speculate=3), overlap=overlap)
            evs, out = events(eng, max_tokens=9, seed=seed)
            u = out.usage
            outs.append(([e.token for e in evs], (u.draft_trials, u.drafts_accepted),
                         u.upstream_calls, u))
            streamed += fake.streamed
        runs[overlap] = outs, streamed
    (whole, n_whole), (live, n_live) = runs[False], runs[True]
    assert n_whole == 0 and n_live > 0
    for (tok_a, book_a, calls_a, ua), (tok_b, book_b, calls_b, ub) in zip(whole, live):
        assert tok_a == tok_b and book_a == book_b and calls_a == calls_b
        # the fake counts prompt characters: one per token here, so the estimate is exact
        assert ub.upstream_prompt_tokens == ua.upstream_prompt_tokens
        assert ub.estimated_prompt_tokens > 0 and ua.estimated_prompt_tokens == 0
        # every token read is billed, before generate returns
        assert ub.upstream_completion_tokens >= ub.completion_tokens
        # never more billed than the whole calls (a rejection cancels the stream)
        assert ub.upstream_completion_tokens <= ua.upstream_completion_tokens
        assert ub.rejected_draft_tokens <= ua.rejected_draft_tokens



def test_a_greedy_draft_outside_the_candidates_leaves_q_whole(target):
    """Greedy drafts: d = δ at the drafted token. When that token is not among the reported
    candidates (q = 0 there) it is rejected and the replacement must be drawn from q itself,
    not from max(0, q − p) (what d = p would give: the old rule, caught here)."""
    first: dict[bytes, float] = {}
    for pair, prob in target.items():
        first[pair[:1]] = first.get(pair[:1], 0.0) + prob
    fake = ScriptedUpstream(spread, drafts=[["far", "far"]] * N)
    eng = Engine(fake.client(), {"v": CallableValue(tilt, "v")}, draft="greedy",
                 defaults=Guidance(beta=BETA, top_k=TOP_K, speculate=2))

    async def go():
        try:
            g = eng.resolve(None)
            return [(await eng.generate(GenerationRequest(prompt=PROMPT, max_tokens=2, seed=s,
                                                          guidance=g))).tokens[0].token
                    for s in range(N)]
        finally:
            await eng.upstream.aclose()
    samples = asyncio.run(go())
    assert fake.calls[0]["max_tokens"] == 2 and fake.calls[0]["temperature"] == 0.0
    assert _pvalue(samples, first) > ALPHA
