"""Every default and limit of the package, in one place: the CLI flags, the option dataclasses,
`wrap`, the service and the engine all read them from here, so they cannot drift apart.

A leaf module (imports nothing of the package), so anything may import it.
"""

# Guidance (the request's `vas` field; docs/design.md §1, §5)
BETA = 1.0  # guidance strength, in units of the value model's reward sd
TOP_K = 20  # candidates scored per step
SPECULATE = 0  # drafted tokens per upstream call: 0 one per call, -1 adaptive
MAX_SPECULATE = 64
MAX_BEST_OF = 128

# Upstream
PROVIDER = "llamacpp"
# Seconds per upstream call. One value for every command: a one-slot server (llama.cpp) queues
# concurrent requests and a queued request's timeout runs while it waits.
TIMEOUT = 120.0
WRAP_TIMEOUT = 600.0  # `wrap` of a client whose timeout has no read part (the SDK's own default)

# Generation
MAX_TOKENS = 64  # `vas-proxy generate`
COMPLETION_MAX_TOKENS = 16  # `/v1/completions` without max_tokens (OpenAI's default)
CHAT_MAX_TOKENS = 256  # `/v1/chat/completions` without max_tokens
MAX_N = 16  # choices per request (`n`)

# Value models
DEVICE = "cpu"

# Service
HOST = "127.0.0.1"
PORT = 8000
LOG_LEVEL = "info"
