"""Token-id prompts on vLLM, replayed: a fake upstream answering in vLLM's documented shapes.

Shapes, from vllm-project/vllm: /tokenize and /detokenize at the server root
(vllm/entrypoints/serve/tokenize/api_router.py, protocol.py: {"model", "prompt"} or
{"model", "messages", "add_generation_prompt", "continue_final_message"} -> {"count",
"max_model_len", "tokens", "token_strs"}; {"model", "tokens"} -> {"prompt"}, decoded without
skipping special tokens, a lone piece of a character as U+FFFD); /v1/completions with
`prompt: list[int]` and the per-request `return_tokens_as_token_ids`, whose logprobs spell every
token "token_id:N" and carry no bytes (vllm/entrypoints/openai/completion/protocol.py,
serving.py). The fake's model is a small table over an 11-token vocabulary.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import httpx2 as httpx
import pytest

from vas_proxy.engine import Engine, GenerationRequest
from vas_proxy.guidance import Guidance
from vas_proxy.prompting import PromptBuilder
from vas_proxy.upstream.client import UpstreamClient
from vas_proxy.upstream.continuation import ChatPrompt, TokenPrompt
from vas_proxy.upstream.retry import RetryPolicy

VOCAB = {0: "<|im_start|>", 1: "<|im_end|>", 2: "user", 3: "assistant", 4: "\n", 5: "Hi",
         6: "Hello", 7: " world", 8: "!", 9: "\ufffd", 10: " there"}
WORDS = {t: i for i, t in VOCAB.items() if i >= 5 and i != 9}
PIECE, END = 9, 1
# next-token logprobs by the last id (the fake's "model"); 9 is a piece of a character
NEXT = {4: {6: -0.3, PIECE: -2.0, END: -3.0}, 6: {7: -0.2, END: -2.5, PIECE: -3.0},
        7: {8: -0.5, 10: -1.5}, 8: {END: -0.1, 8: -3.0}, 10: {END: -0.2, 8: -2.0},
        PIECE: {7: -0.1}}
PROMPT_IDS = [0, 2, 4, 5, 1, 4, 0, 3, 4]  # chatml of "Hi", ready for the answer


def words(text: str) -> list[int]:
    out = []
    while text:
        tok = max((t for t in WORDS if text.startswith(t)), key=len)
        out.append(WORDS[tok])
        text = text[len(tok):]
    return out


class FakeVLLM:
    def __init__(self):
        self.seen: list[tuple[str, dict]] = []
        self.detokenized = Counter()

    def __call__(self, req: httpx.Request) -> httpx.Response:
        body = json.loads(req.content)
        self.seen.append((req.url.path, body))
        if req.url.path == "/tokenize":
            return httpx.Response(200, json=self.tokenize(body))
        if req.url.path == "/detokenize":
            (i,) = body["tokens"]
            self.detokenized[i] += 1
            return httpx.Response(200, json={"prompt": VOCAB[i]})
        assert req.url.path == "/v1/completions"
        assert body["return_tokens_as_token_ids"] is True
        assert isinstance(body["prompt"], list) and body["prompt"][:9] == PROMPT_IDS
        table = NEXT[body["prompt"][-1]]
        best = max(table, key=table.get)
        top = dict(sorted(table.items(), key=lambda kv: -kv[1])[:body["logprobs"]])
        return httpx.Response(200, json={
            "id": "cmpl-1", "object": "text_completion", "model": body["model"],
            "choices": [{"index": 0, "text": VOCAB[best], "finish_reason": "length",
                         "logprobs": {"tokens": [f"token_id:{best}"],
                                      "token_logprobs": [table[best]],
                                      "top_logprobs": [{f"token_id:{i}": lp
                                                        for i, lp in top.items()}]}}],
            "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": 1,
                      "total_tokens": len(body["prompt"]) + 1}})

    @staticmethod
    def tokenize(body: dict) -> dict:
        if "prompt" in body:
            ids = words(body["prompt"])
        else:
            assert not (body.get("add_generation_prompt") and body.get("continue_final_message"))
            ids = []
            msgs = body["messages"]
            for n, m in enumerate(msgs):
                ids += [0, 2 if m["role"] == "user" else 3, 4] + words(m["content"])
                if not (n == len(msgs) - 1 and body.get("continue_final_message")):
                    ids += [1, 4]
            if body.get("add_generation_prompt", True):
                ids += [0, 3, 4]
        return {"count": len(ids), "max_model_len": 4096, "tokens": ids, "token_strs": None}


def client(fake: FakeVLLM) -> UpstreamClient:
    return UpstreamClient("http://vllm.local:8000/v1", "Qwen/Qwen2.5-1.5B-Instruct",
                          profile="vllm", transport=httpx.MockTransport(fake), use_cache=False,
                          retry=RetryPolicy.none())


def test_a_chat_in_vllms_own_template_continued_by_ids():
    """No local template: the prompt's ids come from vLLM's /tokenize of the messages; every
    step sends them plus the chosen ids; texts are learnt once per id; the end token (found
    from the template: closed minus open turn) ends the answer; the piece of a character,
    whose bytes vLLM cannot say, is never chosen and its mass is counted (beta 0, 40 seeds)."""
    fake = FakeVLLM()

    async def go():
        async with client(fake) as c:
            builder = PromptBuilder(c, None, "tokens")
            p = await builder.chat([{"role": "user", "content": "Hi"}])
            g = Guidance(beta=0.0, speculate=0, top_k=3)
            eng = Engine(c, {}, defaults=g)
            gens = [await eng.generate(GenerationRequest(
                prompt=p.text, upstream_prompt=p.upstream, max_tokens=6, seed=s, guidance=g))
                for s in range(40)]
            return p, gens, await c.tokenizer.end_id()

    p, gens, end = asyncio.run(go())
    assert isinstance(p.upstream, TokenPrompt) and list(p.upstream.ids) == PROMPT_IDS
    assert p.text.startswith("<|im_start|>user\nHi<|im_end|>")  # the value models' view
    assert end == END
    texts = Counter(g.text for g in gens)
    assert set(texts) <= {"", "Hello", "Hello world!", "Hello world there", "Hello world there!",
                          "Hello world!!", "Hello world!!!", "Hello world there!!"}, texts
    assert len(texts) >= 2
    assert all(g.finish_reason == "stop" for g in gens if not g.text.endswith("!!!"))
    assert all(g.usage.unreachable_mass > 0 for g in gens)  # the piece's mass at step one
    assert all(n == 1 for n in fake.detokenized.values())
    assert PIECE in fake.detokenized and END not in fake.detokenized
    for path, body in fake.seen:
        if path == "/v1/completions":
            assert PIECE not in body["prompt"][9:] and END not in body["prompt"][9:]


def test_a_partial_answer_is_continued_open():
    """A trailing assistant message: tokenised with continue_final_message, no generation
    prompt (vLLM rejects both), so the ids end inside the assistant's turn."""
    fake = FakeVLLM()

    async def go():
        async with client(fake) as c:
            builder = PromptBuilder(c, None, "tokens")
            return await builder.chat([{"role": "user", "content": "Hi"},
                                       {"role": "assistant", "content": "Hello"}])

    p = asyncio.run(go())
    assert list(p.upstream.ids) == PROMPT_IDS + [6]
    path, body = fake.seen[0]
    assert path == "/tokenize" and body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False and body["model"] == "Qwen/Qwen2.5-1.5B-Instruct"


@pytest.mark.parametrize("chat,expected", [(True, "chat"), (False, "completions")])
def test_auto_keeps_chat_prefill_first_on_vllm(chat, expected):
    """Token ids are opt-in on vLLM (gateways may not pass /tokenize on)."""
    async def go():
        async with client(FakeVLLM()) as c:
            return PromptBuilder(c, None).choose(chat=chat) if chat else \
                PromptBuilder(c, None).choose(chat=False)
    assert asyncio.run(go()) == expected


def test_text_and_chat_prompts_do_not_ask_for_ids():
    fake = FakeVLLM()

    async def go():
        async with client(fake) as c:
            c_body = c._id_fields("text"), c._id_fields(ChatPrompt(({"role": "user",
                                                                     "content": "Hi"},), ""))
            return c_body, c._id_fields([1, 2])
    (text, chat), ids = asyncio.run(go())
    assert text == {} and chat == {} and ids == {"return_tokens_as_token_ids": True}
