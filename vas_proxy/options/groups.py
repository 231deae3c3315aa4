"""The option groups, one dataclass each; a subcommand's flags are the groups it uses
(docs/design.md §5): generate = upstream + guidance + cache + value loading + generate,
serve = the same + serve, train = TrainConfig, eval = EvalConfig, demo = DemoOptions.
`runtime.Options` is made of the first four (and serve's rewards).

Light on purpose (defaults, env, errors only): the parser is built at every CLI start. What
needs the heavy modules (value specs, the engine's Guidance) imports them when called.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import defaults, env
from ..rewards import SPEC_FORMS as REWARD_HELP
from ..values.loader import SPEC_FORMS as VALUE_HELP
from .flags import option
from .named_specs import default_value_specs as default_values
from .named_specs import parse_reward_specs as parse_rewards
from .named_specs import parse_value_specs as parse_values


@dataclass
class UpstreamOptions:
    """The black box: where it is and how to talk to it."""

    TITLE = "upstream"

    url: str | None = option(None, "OpenAI-compatible base URL ending in /v1 (default: start "
                                   "the embedded SmolLM2 upstream)", flag="--upstream",
                             metavar="URL")
    model: str | None = option(None, "upstream model (default: the first it lists)",
                               metavar="NAME")
    provider: str = option(defaults.PROVIDER, "provider profile: llamacpp, vllm, sglang, "
                                              "openai-completions, ...")
    api_key: str | None = option(None, f"upstream API key (or {env.UPSTREAM_API_KEY})",
                                 parse=env.upstream_api_key, secret=True)
    # One default for every command: a one-slot server queues requests, and a queued request's
    # timeout runs while it waits.
    timeout: float = option(defaults.TIMEOUT, "seconds per upstream call")
    chat_template: str | None = option(None, "chatml, a .gguf, a tokenizer dir or a Jinja file "
                                             "(default: the embedded model's own; raw prompts "
                                             "for other upstreams)", metavar="SPEC")
    continuation: str = option(defaults.CONTINUATION, "how the upstream continues an answer: "
                               "auto, tokens (token-id prompts), chat (chat prefill), "
                               "completions (text, template applied here)")
    embedded: str | None = option(None, "the embedded upstream's server: llama-server or "
                                        "llama-cpp-python (default: llama-server where built)")
    adapter: str | None = option(None, "a LoRA adapter GGUF the embedded upstream applies to "
                                       "SmolLM2: a tuned model (`vas-proxy baseline rl`'s "
                                       "adapter.gguf)", metavar="FILE")


@dataclass
class GuidanceOptions:
    """The server-side defaults of the request's `vas` field, and the value models it names."""

    TITLE = "guidance"

    values: dict[str, str] = option(factory=default_values, help=f"value model: {VALUE_HELP}; "
                                    "repeatable (default: the bundled demo value model)", flag="--value",
                                    metavar="NAME=SPEC", repeat=True, parse=parse_values)
    beta: float = option(defaults.BETA, "guidance strength, in units of the value model's "
                                        "reward sd")
    top_k: int = option(defaults.TOP_K, "candidates scored per step")
    speculate: int | None = option(defaults.SPECULATE, "draft tokens per upstream call: 0 one "
                                   "token per call, -1 adaptive (exact either way; default: "
                                   "adaptive where the provider's drafts are exact, else 0)")

    def engine_defaults(self):
        """The engine's `Guidance` (validated: a bad flag fails before anything starts)."""
        from ..guidance import Guidance

        guidance = Guidance(beta=self.beta, top_k=self.top_k, speculate=self.speculate)
        guidance.validate()
        return guidance


@dataclass
class CacheOptions:
    """The upstream response cache (seeded requests only)."""

    TITLE = "cache"

    cache_dir: str | None = option(None, "upstream response cache: a directory, or "
                                         "redis://HOST:PORT/DB shared by replicas (default: "
                                         f"${env.CACHE_DIR} or ~/.cache/vas-proxy); only "
                                         "seeded requests are cached", metavar="DIR|URL",
                                   short="--cache")
    cache_ttl: float = option(defaults.CACHE_TTL, "seconds a cached answer lives",
                              metavar="SECONDS")
    use_cache: bool = option(True, "never read or write the cache", flag="--no-cache")


@dataclass
class ValueLoadOptions:
    """Where and how the value models (and rewards) are loaded."""

    TITLE = "value models"

    device: str = option(defaults.DEVICE, "value-model device: cpu, cuda, cuda:1 ...")
    dtype: str | None = option(None, "value-model dtype (default float32 on CPU)",
                               choices=defaults.DTYPES)


@dataclass
class ServeOptions:
    """`vas-proxy serve`'s own: the address, the key clients must send, the rewards."""

    host: str = option(defaults.HOST, "address to bind; off loopback an --api-key is required")
    port: int = option(defaults.PORT, "port to listen on")
    api_key: str | None = option(None, "require Authorization: Bearer KEY on /v1 (or "
                                       f"{env.PROXY_API_KEY}); needed off loopback",
                                 parse=env.proxy_api_key, secret=True)
    log_level: str = option(defaults.LOG_LEVEL, "log level of the service and uvicorn",
                            choices=defaults.LOG_LEVELS)
    rewards: dict[str, str] = option(factory=dict, help="reward that requests may name for the "
                                     "Best-of-N baseline (vas.best_of, vas.reward): "
                                     f"{REWARD_HELP}; repeatable", flag="--reward",
                                     metavar="NAME=SPEC", repeat=True, parse=parse_rewards)


@dataclass
class LimitOptions:
    """What one request may ask of `vas-proxy serve` (docs/design.md §5). Over a limit: an
    OpenAI-shaped 400 (413 for the body); no room for its generations now: 429 with
    Retry-After. `wrap` runs in the caller's own process and is not limited."""

    TITLE = "limits"

    max_tokens: int = option(defaults.LIMIT_MAX_TOKENS, "most max_tokens per choice",
                             flag="--limit-max-tokens", metavar="N")
    n: int = option(defaults.MAX_N, "most choices (n) per request", flag="--limit-n", metavar="N")
    body_bytes: int = option(defaults.LIMIT_BODY_BYTES, "largest request body, in bytes",
                             flag="--limit-body-bytes", metavar="BYTES")
    prompt_chars: int = option(defaults.LIMIT_PROMPT_CHARS, "longest prompt (or all messages "
                               "together), in characters", flag="--limit-prompt-chars",
                               metavar="CHARS")
    generations: int = option(defaults.LIMIT_GENERATIONS, "generations in flight over all "
                              "requests (a Best-of-N choice counts N); beyond: 429",
                              flag="--limit-generations", metavar="N")
    deadline: float = option(defaults.LIMIT_DEADLINE, "seconds a request may run before it is "
                             "cancelled and answered 504", flag="--limit-deadline",
                             metavar="SECONDS")
    grace: float = option(defaults.SHUTDOWN_GRACE, "seconds SIGTERM waits for requests in "
                          "flight before cancelling them", flag="--shutdown-grace",
                          metavar="SECONDS")

    def __post_init__(self):
        from ..errors import ConfigError

        for name in ("max_tokens", "n", "body_bytes", "prompt_chars", "generations"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"--limit-{name.replace('_', '-')} must be an integer >= 1")
        if self.n > defaults.MAX_N:
            raise ConfigError(f"--limit-n can be at most {defaults.MAX_N}")
        if not self.deadline > 0 or not self.grace >= 0:
            raise ConfigError("--limit-deadline must be > 0 and --shutdown-grace >= 0")


@dataclass
class GenerateOptions:
    """`vas-proxy generate`'s own: the prompt and how to sample its answer."""

    prompt: str = option(help="the user message (sent as is with --raw)", positional=True)
    max_tokens: int = option(defaults.MAX_TOKENS, "tokens to generate")
    temperature: float = option(defaults.TEMPERATURE, "sampling temperature")
    top_p: float = option(defaults.TOP_P, "nucleus sampling: keep this much probability mass")
    stop: list[str] | None = option(None, "stop string (repeatable)")
    seed: int | None = option(None, "same seed, same text")
    raw: bool = option(False, "send PROMPT as is, no chat template")
    quiet: bool = option(False, "no progress on stderr", short="-q")
    # Best-of-N instead of one guided answer. None: not given (the rules of `vas`, shared:
    # --reward and --best-of-mode only with --best-of, --prune-* only with mode pruned).
    best_of: int | None = option(None, "answer with the best of N samples (needs --reward)",
                                 metavar="N", section="best-of-N")
    best_of_mode: str | None = option(None, "plain samples, samples pruned by the value models "
                                      "every --prune-block tokens, or guided (VAS) samples "
                                      f"(default: {defaults.BEST_OF_MODES[0]})",
                                      choices=defaults.BEST_OF_MODES, section="best-of-N")
    prune_block: int | None = option(None, "pruned: tokens between value rankings (default: "
                                     f"{defaults.PRUNE_BLOCK})", metavar="B",
                                     section="best-of-N")
    prune_keep: float | None = option(None, "pruned: fraction of the partial answers kept at "
                                      f"each ranking, in (0, 1] (default: {defaults.PRUNE_KEEP})",
                                      metavar="F", section="best-of-N")
    reward: str | None = option(None, f"the reward that picks the winner: {REWARD_HELP}",
                                metavar="[NAME=]SPEC", section="best-of-N")

    def best_of_fields(self) -> dict:
        """The Best-of-N flags given, as the `vas` fields they set (for the shared rules)."""
        fields = {"best_of": self.best_of, "reward": self.reward,
                  "best_of_mode": self.best_of_mode, "prune_block": self.prune_block,
                  "prune_keep": self.prune_keep}
        return {k: v for k, v in fields.items() if v is not None}
