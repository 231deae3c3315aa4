"""Provider profiles: what each kind of OpenAI-compatible upstream can do for VAS (DESIGN §2).

A profile says how many top logprobs the provider returns, which extra sampler parameters make
its own samples follow its reported logprobs (so temperature-1 drafts are exact and cached
logprob answers stay valid), and how a partial assistant answer is continued.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UnsupportedProviderError


@dataclass(frozen=True)
class Profile:
    name: str
    max_top_k: int
    # Sent with every completion call. llama.cpp samples with top_k=40, top_p=0.95, min_p=0.05,
    # repeat_penalty=1.1 by default, so its samples do NOT follow its logprobs (DESIGN §4).
    sampler_params: dict = field(default_factory=dict)
    # How a partial answer is continued: "completions" (raw /v1/completions with the chat template
    # applied locally), "continue_final_message" (vLLM/SGLang chat), "prefix" (DeepSeek beta,
    # Mistral: `prefix: true` on the last assistant message), or None (cannot continue).
    continuation: str | None = "completions"
    # The upstream's samples follow its reported logprobs with `sampler_params` set: only then are
    # temperature-1 speculative drafts exact (checked by the exactness tests for llamacpp).
    samples_follow_logprobs: bool = False
    token_id_prompts: bool = False
    unsupported: str | None = None
    note: str = ""

    def check(self) -> None:
        if self.unsupported:
            raise UnsupportedProviderError(f"provider {self.name!r} cannot be guided: {self.unsupported}")

    def clamp_top_k(self, k: int) -> int:
        if k < 1:
            raise ValueError("top_k must be >= 1")
        if k > self.max_top_k:
            raise UnsupportedProviderError(
                f"top_k={k} exceeds what provider {self.name!r} returns (at most {self.max_top_k} "
                f"logprobs per position); use --top-k {self.max_top_k} or lower", param="top_k")
        return k


PROFILES: dict[str, Profile] = {p.name: p for p in [
    Profile("llamacpp", max_top_k=20,
            sampler_params={"top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0,
                            "presence_penalty": 0.0, "frequency_penalty": 0.0},
            samples_follow_logprobs=True,
            note="llama-cpp-python's server documents no chat prefill: continue through "
                 "/v1/completions with the model's chat template applied locally. Reported "
                 "logprobs are the raw model distribution (same at T=1, 0.5, 0)."),
    Profile("vllm", max_top_k=20,
            sampler_params={"top_k": -1, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0},
            samples_follow_logprobs=True, token_id_prompts=True,
            note="vLLM caps logprobs at --max-logprobs (20 by default); chat can also continue "
                 "with continue_final_message=true, add_generation_prompt=false."),
    Profile("sglang", max_top_k=20, sampler_params={"top_k": -1, "top_p": 1.0, "min_p": 0.0},
            token_id_prompts=True, note="chat continues with continue_final_message."),
    Profile("openai-completions", max_top_k=5,
            note="legacy OpenAI /v1/completions returns at most 5 top logprobs per position."),
    Profile("deepseek", max_top_k=20, continuation="prefix",
            note="DeepSeek beta continues with prefix: true on the last assistant message."),
    Profile("mistral", max_top_k=20, continuation="prefix",
            note="Mistral continues with prefix: true on the last assistant message."),
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
