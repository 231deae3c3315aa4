"""Wire-faithful replays of the providers we cannot reach from the test machine.

Each file in tests/wire/ records one provider's request and answer as its public docs or its
open-source server code describe them (the file's "source" names which). A fake upstream
(httpx MockTransport) checks what our client sent (route, the profile's sampler fields, the
logprobs fields, how a partial answer is marked) and answers the recorded response; the tests
then check what we parsed from it.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
from urllib.parse import urlparse

import httpx2 as httpx
import pytest

from vas_proxy import errors
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.upstream.continuation import ChatPrompt
from vas_proxy.upstream.profiles import get_profile
from vas_proxy.upstream.retry import RetryPolicy

WIRE = pathlib.Path(__file__).parent / "wire"
CASES = {p.stem: json.loads(p.read_text()) for p in sorted(WIRE.glob("*.json"))}


def _prompt(call: dict):
    if "chat" in call:
        chat = call["chat"]
        return ChatPrompt(messages=tuple(chat["messages"]), prefill=chat.get("prefill", ""))
    return call["prompt"]


def replay(case: dict, *, profile: str | None = None, response: dict | None = None,
           **overrides):
    """Run the case's call against a fake upstream answering its recorded response; returns
    (result or raised exception, the requests the fake received as (path, body))."""
    seen: list[tuple[str, dict]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append((req.url.path, json.loads(req.content)))
        return httpx.Response(200, json=response if response is not None else case["response"])

    call = {**case["call"], **overrides}
    kwargs = {k: call[k] for k in ("top_k", "max_tokens", "temperature", "seed", "n")
              if k in call}
    client = UpstreamClient(case["base_url"], case["model"], profile=profile or case["profile"],
                            transport=httpx.MockTransport(handler), use_cache=False,
                            retry=RetryPolicy.none())

    async def go():
        try:
            return await client.complete(_prompt(call), **kwargs)
        except errors.VasError as e:
            return e
        finally:
            await client.aclose()

    return asyncio.run(go()), seen


def _rows(position) -> list[list]:
    return [[c.text, c.logprob, None if c.raw is None else list(c.raw), c.id]
            for c in position.candidates]


# --- what we send --------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_request_matches_provider_docs(name):
    case = CASES[name]
    _, seen = replay(case)
    assert len(seen) == 1, "one call, no retries"
    path, body = seen[0]
    want = case["request"]
    assert path == urlparse(case["base_url"]).path + want["path"]
    assert body["model"] == case["model"]
    for key, value in want.get("fields", {}).items():
        assert key in body and body[key] == value, (key, body.get(key))
    for key in want.get("absent", []):
        assert key not in body, key
    # every sampler field of the profile goes out as it is
    for key, value in get_profile(case["profile"]).sampler_params.items():
        assert body[key] == value, key
    if "allowed_fields" in want:  # the provider rejects fields it does not know
        assert set(body) <= set(want["allowed_fields"]), set(body) - set(want["allowed_fields"])
    if "messages" in want:
        assert body["messages"] == want["messages"]
    chat = "chat" in case["call"]
    assert ("messages" in body) == chat and ("prompt" in body) == (not chat)
    if chat:  # logprobs in the chat form; the legacy integer is never sent there
        assert body["logprobs"] is True and body["top_logprobs"] == case["call"]["top_k"]
    else:
        assert body["logprobs"] == case["call"]["top_k"] and "top_logprobs" not in body


# --- what we parse -------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_parsed_answer(name):
    case = CASES[name]
    res, _ = replay(case)
    want = case["expect"]
    if "error" in want:
        assert type(res).__name__ == want["error"], res
        return
    assert not isinstance(res, Exception), res
    assert [_rows(p) for p in res.positions] == want["positions"]
    assert res.text == want["text"]
    assert res.finish_reason == want["finish_reason"]
    assert res.prompt_tokens == want["prompt_tokens"]
    assert res.completion_tokens == want["completion_tokens"]
    assert res.cached_tokens == want["cached_tokens"]
    if "choices" in want:
        assert [list(c) for c in res.choices] == want["choices"]
    if "sampled" in want:
        assert [p.sampled.text for p in res.positions] == want["sampled"]
    if "sampled_full" in want:
        s = res.positions[0].sampled
        assert [s.text, s.logprob, list(s.raw), s.id] == want["sampled_full"]
    for p in res.positions:  # best first, never more than asked
        lps = [c.logprob for c in p.candidates]
        assert lps == sorted(lps, reverse=True) and len(lps) <= case["call"]["top_k"]


# --- focused checks ------------------------------------------------------------------------

def test_minus_9999_entries_are_dropped_not_candidates():
    # vLLM clamps a -inf logprob to -9999.0 (max(logprob, -9999.0) in its serving code)
    res, _ = replay(CASES["vllm_completions_legacy"])
    texts = [c.text for p in res.positions for c in p.candidates]
    assert "\u00a0" not in texts
    assert all(c.logprob > -9999.0 for p in res.positions for c in p.candidates)


def test_sampled_token_outside_top_k_is_not_a_candidate():
    # vLLM's legacy dict lists the sampled token first, even when it is not in the top k
    res, _ = replay(CASES["vllm_completions_legacy"])
    last = res.positions[2]
    assert last.sampled.text == " It" and " It" not in [c.text for c in last.candidates]


def test_reported_logprobs_are_taken_as_the_raw_distribution():
    """vLLM's --logprobs-mode defaults to raw_logprobs: "Raw means the values before applying
    any logit processors ... Processed means the values after applying all processors,
    including temperature and top_k/top_p" (vLLM engine args docs; vllm/config/model.py).
    So an answer sampled at T=0.5 reports the T=1 model distribution, and we keep those
    numbers exactly: no division by T, no renormalisation over the top k."""
    case = CASES["vllm_completions_temperature"]
    res, seen = replay(case)
    assert seen[0][1]["temperature"] == 0.5
    reported = case["response"]["choices"][0]["logprobs"]["top_logprobs"][0]
    assert {c.text: c.logprob for c in res.positions[0].candidates} == reported
    assert sum(2.718281828459045 ** lp for lp in reported.values()) < 1  # not renormalised


def test_first_position_short_is_an_error_later_ends_the_report():
    res, _ = replay(CASES["fireworks_completions_too_few"])
    assert isinstance(res, errors.TooFewCandidatesError)
    res, _ = replay(CASES["sglang_completions_stub"])  # the third position has none
    assert len(res.positions) == 2
    res, _ = replay(CASES["vllm_chat_continue"])  # vLLM's end-of-turn stub position
    assert len(res.positions) == 2


def test_legacy_shape_tolerates_collisions_chat_shape_does_not():
    # the same shortfall (3 of 4 asked) at the first position of each shape
    legacy, _ = replay(CASES["sglang_completions_collision"])
    assert [len(p.candidates) for p in legacy.positions] == [3]
    chat, _ = replay(CASES["deepseek_chat_too_few"])
    assert isinstance(chat, errors.TooFewCandidatesError)


def test_answer_without_logprobs_is_no_logprobs_error():
    res, _ = replay(CASES["mistral_chat_prefix_no_logprobs"])
    assert isinstance(res, errors.NoLogprobsError)
    # the same for a legacy answer whose logprobs are null
    case = CASES["together_completions"]
    answer = json.loads(json.dumps(case["response"]))
    answer["choices"][0]["logprobs"] = None
    res, _ = replay(case, response=answer)
    assert isinstance(res, errors.NoLogprobsError)


def test_choices_ordered_by_index_positions_are_choice_zeros():
    case = CASES["vllm_completions_n2"]
    res, seen = replay(case)
    assert seen[0][1]["n"] == 2
    assert res.choices == [(" Paris.", "length"), (" Lyon,", "length")]
    assert res.text == " Paris." and res.positions[1].candidates[0].text == "."


def test_n_is_not_sent_for_one_choice():
    _, seen = replay(CASES["vllm_completions_legacy"])
    assert "n" not in seen[0][1]


@pytest.mark.parametrize("name,field", [("vllm_completions_legacy", "prompt_tokens_details"),
                                        ("deepseek_chat_prefix", "prompt_cache_hit_tokens")])
def test_cached_token_counts(name, field):
    case = CASES[name]
    usage = case["response"]["usage"]
    want = usage[field]["cached_tokens"] if field == "prompt_tokens_details" else usage[field]
    res, _ = replay(case)
    assert res.cached_tokens == want > 0
    answer = json.loads(json.dumps(case["response"]))
    del answer["usage"][field]
    res, _ = replay(case, response=answer)
    assert res.cached_tokens is None  # not reported is not zero


def test_reported_zero_cached_tokens_stays_zero():
    res, _ = replay(CASES["dashscope_chat_partial"])
    assert res.cached_tokens == 0


def test_chat_text_is_message_content():
    case = CASES["deepseek_chat_prefix"]
    res, _ = replay(case)
    assert res.text == case["response"]["choices"][0]["message"]["content"]


def test_llama_server_prefill_is_stripped_but_not_for_other_profiles():
    case = CASES["llamaserver_chat_prefill"]
    res, _ = replay(case)
    assert get_profile("llama-server").chat_echoes_prefill
    assert res.text == " Paris."
    # vLLM does not repeat the prefill (content is the new text), so it is never cut there
    res, _ = replay(case, profile="vllm")
    assert res.text == "The capital is Paris."


def test_no_prefill_means_no_continuation_marking():
    for name, style_fields in [("vllm_chat_continue", ["continue_final_message",
                                                       "add_generation_prompt"]),
                               ("deepseek_chat_prefix", []), ("dashscope_chat_partial", [])]:
        case = CASES[name]
        chat = {**case["call"]["chat"], "prefill": ""}
        _, seen = replay(case, chat=chat)
        body = seen[0][1]
        assert body["messages"] == case["call"]["chat"]["messages"], name
        for key in style_fields:
            assert key not in body, (name, key)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if "documented_max_top_k" in c])
def test_profile_cap_is_the_documented_one(name):
    case = CASES[name]
    cap = case["documented_max_top_k"]
    assert get_profile(case["profile"]).max_top_k == cap
    res, seen = replay(case, top_k=cap + 1)
    assert isinstance(res, errors.UnsupportedProviderError) and not seen
