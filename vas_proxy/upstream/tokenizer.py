"""The upstream's own tokenizer over HTTP, for token-id prompts with nothing local
(docs/design.md §2.11). Two dialects, named by the profile's `tokenizer`:

- "llama.cpp" (llama.cpp's server): POST /tokenize {"content"}, POST /apply-template
  {"messages"}; its logprobs carry every candidate's id and bytes, so nothing is left to learn.
- "vllm": POST /tokenize {"model", "prompt"} or {"model", "messages", ...} (its template applied
  there), POST /detokenize {"model", "tokens"}. Its /v1/completions logprobs give either texts
  or, with `return_tokens_as_token_ids`, ids spelt "token_id:N", never bytes; so a token-id
  prompt asks for ids and learns each id's text once from /detokenize. Two things that route
  cannot say are handled here: the end-of-turn token detokenizes as its text ("<|im_end|>"),
  so it is found from the template itself (a closed assistant turn minus an open one), and a
  piece of a UTF-8 character detokenizes to U+FFFD, so its bytes stay unknown (the engine
  leaves such candidates out of q and counts their mass, as text prompts do).

All routes sit at the server root (not under /v1).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from ..errors import UnsupportedProviderError
from ..protocol import Candidate, Position
from .wire import answer_shape

DIALECTS = ("llama.cpp", "vllm")


class RemoteTokenizer:
    """One client's view of its upstream's tokenizer (`client`: its `UpstreamClient`, not
    imported: the client owns this); what it learns (id texts, the end token) is kept for the
    client's life."""

    def __init__(self, client):
        self.client = client
        self.dialect = client.profile.tokenizer
        self._texts: dict[int, str] = {}
        self._end: int | None = None

    async def _post(self, path: str, body: dict) -> dict:
        if self.dialect is None:
            raise UnsupportedProviderError(
                f"provider {self.client.profile.name!r} has no tokenizer routes; token-id "
                "prompts need llama.cpp's server or vLLM (--provider llama-server or vllm)")
        return await self.client._post(self.client.base_url.removesuffix("/v1") + path, body)

    async def tokenize(self, text: str) -> list[int]:
        """The upstream's ids of `text`, special tokens parsed as a text prompt's are."""
        if self.dialect == "vllm":
            data = await self._post("/tokenize", {"model": self.client.model, "prompt": text,
                                                  "add_special_tokens": True})
        else:
            data = await self._post("/tokenize", {"content": text, "add_special": True,
                                                  "parse_special": True})
        with answer_shape("tokenize answer"):
            return [int(t) for t in data["tokens"]]

    async def apply_template(self, messages: list[dict]) -> str:
        """llama.cpp's server: its own template applied, with the generation prompt."""
        if self.dialect != "llama.cpp":
            raise UnsupportedProviderError(
                f"provider {self.client.profile.name!r} does not render its template as text")
        data = await self._post("/apply-template", {"messages": messages})
        with answer_shape("apply-template answer"):
            return str(data["prompt"])

    async def chat_ids(self, messages: list[dict], prefill: str = "") -> list[int]:
        """The ids of a conversation in the upstream's own template, ready for the assistant's
        answer (`prefill`: its start, continued)."""
        if self.dialect == "llama.cpp":
            return await self.tokenize(await self.apply_template(messages) + prefill)
        return await self._vllm_chat(messages, prefill, close=False)

    async def _vllm_chat(self, messages: list[dict], prefill: str, close: bool) -> list[int]:
        body = {"model": self.client.model, "messages": list(messages)}
        if prefill or close:
            body["messages"] = body["messages"] + [{"role": "assistant", "content": prefill}]
            body |= {"add_generation_prompt": False, "continue_final_message": not close}
        else:
            body["add_generation_prompt"] = True
        data = await self._post("/tokenize", body)
        with answer_shape("tokenize answer"):
            return [int(t) for t in data["tokens"]]

    async def end_id(self) -> int | None:
        """vLLM: the end-of-turn token, the first id a closed assistant turn has past an open
        one in the upstream's own template (None if they do not differ so)."""
        if self._end is None:
            turn = [{"role": "user", "content": "Hi"}]
            open_ = await self._vllm_chat(turn, "Hello", close=False)
            closed = await self._vllm_chat(turn, "Hello", close=True)
            if len(closed) > len(open_) and closed[:len(open_)] == open_:
                self._end = closed[len(open_)]
            else:
                self._end = -1
        return None if self._end < 0 else self._end

    async def _learn(self, ids: set[int]) -> None:
        missing = sorted(i for i in ids if i not in self._texts)

        async def one(i: int) -> None:
            data = await self._post("/detokenize", {"model": self.client.model, "tokens": [i]})
            with answer_shape("detokenize answer"):
                self._texts[i] = str(data["prompt"])
        await asyncio.gather(*(one(i) for i in missing))

    async def name(self, positions: list[Position]) -> list[Position]:
        """vLLM positions whose candidates are known by id alone, with each id's text and
        bytes filled in: the end token as a control token (no bytes), a piece of a character
        left unnamed (bytes unknown: `Candidate.unnamed`)."""
        if self.dialect != "vllm":
            return positions
        wanted = {c.id for p in positions for c in [*p.candidates, p.sampled]
                  if c is not None and c.unnamed}
        if not wanted:
            return positions
        end = await self.end_id()
        await self._learn(wanted - {end})

        def named(c: Candidate | None) -> Candidate | None:
            if c is None or not c.unnamed:
                return c
            if c.id == end:
                return replace(c, raw=b"")
            text = self._texts[c.id]
            return c if "\ufffd" in text else replace(c, text=text, raw=text.encode("utf-8"))
        return [replace(p, candidates=[named(c) for c in p.candidates], sampled=named(p.sampled))
                for p in positions]
