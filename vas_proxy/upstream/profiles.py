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
    # How it continues a partial answer (upstream/continuation.py), best first: "tokens"
    # (token-id prompts: exact), "chat" (a trailing assistant message marked in the
    # `chat_prefill` style: the provider applies its own template), "completions" (text, the
    # template applied locally). `auto` picks the first that applies (runtime.prompts).
    strategies: tuple[str, ...] = ("completions",)
    chat_prefill: str | None = None  # a key of continuation.CHAT_PREFILL
    # Its tokenizer as HTTP routes at the server root, so token-id prompts need nothing local:
    # "llama.cpp" (POST /tokenize, POST /apply-template, GET /props) or "vllm" (POST /tokenize,
    # POST /detokenize); upstream/tokenizer.py.
    tokenizer: str | None = None
    # Its chat answer's content repeats the assistant prefill before the new text (llama.cpp's
    # server); the client strips it.
    chat_echoes_prefill: bool = False
    # It holds back a sampled token that ends inside a UTF-8 character, and when the call ends
    # there answers `logprobs: null` (llama.cpp's server, max_tokens reached mid-character):
    # read as "no position", which the engine asks again (chunks.ChunkSource._positions).
    partial_sample_drops_logprobs: bool = False
    # /v1/completions takes `n` (several samples of one prompt in one call, the prompt billed
    # once): vLLM, SGLang, OpenAI's legacy completions. llama-cpp-python's server does not.
    accepts_n: bool = False
    # A streamed /v1/completions carries the top-k logprobs of each position as it is made
    # (llama-cpp-python: tested; vLLM: documented), so scoring can overlap generation.
    streams_logprobs: bool = False
    unsupported: str | None = None  # why VAS cannot work with it; `check()` raises with it

    @property
    def tokenizer_routes(self) -> bool:
        return self.tokenizer is not None

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


# llama.cpp samples with top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1 by default.
_LLAMA_NEUTRAL = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0,
                  "presence_penalty": 0.0, "frequency_penalty": 0.0}

PROFILES: dict[str, Profile] = {p.name: p for p in [
    # llama-cpp-python's server: legacy logprobs only (a dict per position; special and
    # partial-UTF-8 tokens all print as "" and collide), string prompts only, no chat prefill.
    # Its reported logprobs are the raw model distribution (the same at T=1, 0.5 and 0).
    Profile("llamacpp", max_top_k=20, sampler_params=_LLAMA_NEUTRAL,
            samples_follow_logprobs=True, streams_logprobs=True),
    # llama.cpp's C++ server: chat-shaped logprobs with token ids and bytes on /v1/completions
    # too, token-id prompts, a trailing assistant message continued, multi-slot; its
    # tokenizer at /tokenize. Its default samplers also need neutralising (and `n_probs` are
    # the pre-sampling distribution unless post_sampling_probs is asked).
    Profile("llama-server", max_top_k=20,
            sampler_params={**_LLAMA_NEUTRAL, "typical_p": 1.0, "xtc_probability": 0.0,
                            "dry_multiplier": 0.0, "top_n_sigma": -1.0},
            samples_follow_logprobs=True, strategies=("tokens", "chat", "completions"),
            chat_prefill="trailing", tokenizer="llama.cpp", chat_echoes_prefill=True,
            partial_sample_drops_logprobs=True),
    # vLLM caps logprobs at --max-logprobs (20 by default). Its chat continues a trailing
    # assistant message with continue_final_message (as SGLang's does). Token-id prompts
    # (exact: no drift) are opt-in (`--continuation tokens`): they need its /tokenize and
    # /detokenize routes, which gateways in front of a vLLM may not pass on.
    Profile("vllm", max_top_k=20,
            sampler_params={"top_k": -1, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0},
            samples_follow_logprobs=True, accepts_n=True, streams_logprobs=True,
            strategies=("chat", "completions", "tokens"), chat_prefill="continue_final_message",
            tokenizer="vllm"),
    Profile("sglang", max_top_k=20, sampler_params={"top_k": -1, "top_p": 1.0, "min_p": 0.0},
            accepts_n=True, strategies=("chat", "completions"),
            chat_prefill="continue_final_message"),
    # The legacy OpenAI /v1/completions returns at most 5 top logprobs per position.
    Profile("openai-completions", max_top_k=5, accepts_n=True),
    # Together and Fireworks: OpenAI-style /v1/completions with integer `logprobs`; the caps
    # are their documented ones (tests/test_wire_providers.py replays their shapes).
    Profile("together", max_top_k=20, accepts_n=True),
    Profile("fireworks", max_top_k=5, accepts_n=True),
    # DeepSeek (beta base URL) and Mistral: chat prefix completion; no logprobs on their
    # completions routes.
    Profile("deepseek", max_top_k=20, strategies=("chat",), chat_prefill="prefix"),
    Profile("mistral", max_top_k=20, strategies=("chat",), chat_prefill="prefix"),
    Profile("dashscope", max_top_k=5, strategies=("chat",), chat_prefill="partial"),
    Profile("groq", max_top_k=0, strategies=(),
            unsupported="Groq answers requests with logprobs with HTTP 400"),
    Profile("anthropic", max_top_k=0, strategies=(),
            unsupported="Anthropic's API returns no logprobs"),
    Profile("openai-reasoning", max_top_k=0, strategies=(),
            unsupported="reasoning models (o-series, gpt-5) reject logprobs"),
]}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UnsupportedProviderError(
            f"unknown provider profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None
