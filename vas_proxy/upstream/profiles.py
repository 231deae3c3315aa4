"""Provider profiles: what each kind of OpenAI-compatible upstream can do for VAS
(docs/design.md §2).

A profile says how many top logprobs the provider returns, which extra sampler parameters make
its own samples follow its reported logprobs (so temperature-1 drafts are exact and cached
logprob answers stay valid), and how a partial assistant answer could be continued.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UnsupportedProviderError


@dataclass(frozen=True)
class Profile:
    name: str
    max_top_k: int
    # Sent with every completion call. llama.cpp samples with top_k=40, top_p=0.95, min_p=0.05,
    # repeat_penalty=1.1 by default, so its samples do NOT follow its logprobs (docs/design.md
    # §4).
    sampler_params: dict = field(default_factory=dict)
    # The upstream's samples follow its reported logprobs with `sampler_params` set: only then are
    # temperature-1 speculative drafts exact (checked by the exactness tests for llamacpp).
    samples_follow_logprobs: bool = False
    # Declared, not yet used: today every profile is driven through raw /v1/completions with
    # the chat template applied locally. They say what the coming chat and token paths will use:
    # - `continuation`: how the provider continues a partial assistant answer (prefill):
    #   "completions" (raw /v1/completions, as today), "continue_final_message" (vLLM/SGLang
    #   chat: `continue_final_message=true, add_generation_prompt=false` with the partial answer
    #   as the trailing assistant message), "prefix" (DeepSeek beta, Mistral: `prefix: true` on
    #   the trailing assistant message; their completions cannot do it), or None (no way);
    # - `token_id_prompts`: /v1/completions takes the prompt as a list of token ids, so the
    #   response can be sent as the exact tokens chosen instead of re-tokenised text.
    continuation: str | None = "completions"
    token_id_prompts: bool = False
    # /v1/completions takes `n` (several samples of one prompt in one call, the prompt billed
    # once): vLLM, SGLang, OpenAI's legacy completions. llama-cpp-python's server does not.
    accepts_n: bool = False
    # A streamed /v1/completions carries the top-k logprobs of each position as it is made
    # (llama-cpp-python: tested; vLLM: documented), so scoring can overlap generation.
    streams_logprobs: bool = False
    unsupported: str | None = None  # why VAS cannot work with it; `check()` raises with it

    @property
    def default_speculate(self) -> int:
        """Adaptive speculation where drafts are the upstream's own exact samples, else one
        token per call (greedy drafts are exact too, but rarely accepted at beta > 0)."""
        return -1 if self.samples_follow_logprobs else 0

    def check(self) -> None:
        if self.unsupported:
            raise UnsupportedProviderError(
                f"provider {self.name!r} cannot be guided: {self.unsupported}")

    def clamp_top_k(self, k: int) -> int:
        if k < 1:
            raise ValueError("top_k must be >= 1")
        if k > self.max_top_k:
            raise UnsupportedProviderError(
                f"top_k={k} exceeds what provider {self.name!r} returns (at most {self.max_top_k} "
                f"logprobs per position); use --top-k {self.max_top_k} or lower", param="top_k")
        return k


PROFILES: dict[str, Profile] = {p.name: p for p in [
    # llama-cpp-python's server documents no chat prefill. Its reported logprobs are the raw
    # model distribution (the same at T=1, 0.5 and 0).
    Profile("llamacpp", max_top_k=20,
            sampler_params={"top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0,
                            "presence_penalty": 0.0, "frequency_penalty": 0.0},
            samples_follow_logprobs=True, streams_logprobs=True),
    # vLLM caps logprobs at --max-logprobs (20 by default). vLLM and SGLang chat can also
    # continue with continue_final_message.
    Profile("vllm", max_top_k=20,
            sampler_params={"top_k": -1, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0},
            samples_follow_logprobs=True, token_id_prompts=True, accepts_n=True,
            streams_logprobs=True),
    Profile("sglang", max_top_k=20, sampler_params={"top_k": -1, "top_p": 1.0, "min_p": 0.0},
            token_id_prompts=True, accepts_n=True),
    # The legacy OpenAI /v1/completions returns at most 5 top logprobs per position.
    Profile("openai-completions", max_top_k=5, accepts_n=True),
    Profile("deepseek", max_top_k=20, continuation="prefix"),
    Profile("mistral", max_top_k=20, continuation="prefix"),
    Profile("groq", max_top_k=0, continuation=None,
            unsupported="Groq answers requests with logprobs with HTTP 400"),
    Profile("anthropic", max_top_k=0, continuation=None,
            unsupported="Anthropic's API returns no logprobs"),
    Profile("openai-reasoning", max_top_k=0, continuation=None,
            unsupported="reasoning models (o-series, gpt-5) reject logprobs"),
]}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UnsupportedProviderError(
            f"unknown provider profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None
