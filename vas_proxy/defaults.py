"""Every default and limit of the package, in one place: the CLI flags, the option dataclasses,
`wrap`, the service and the engine all read them from here, so they cannot drift apart.

A leaf module (imports nothing of the package), so anything may import it.
"""

# Guidance (the request's `vas` field; docs/design.md §1, §5)
BETA = 1.0  # guidance strength, in units of the value model's reward sd
MAX_BETA = 1e4  # |beta| beyond this only overflows exp(beta·V): the target is already argmax
TOP_K = 20  # candidates scored per step
# Drafted tokens per upstream call: 0 one per call, L > 0 that many, -1 adaptive (from the
# request's running acceptance rate). None: the provider profile's default, adaptive where its
# drafts are exact (its samples follow its logprobs: llamacpp, vllm), else one per call.
SPECULATE = None
MAX_SPECULATE = 64
MAX_BEST_OF = 128
# Best-of-N modes (`vas.best_of_mode`): plain samples, value-pruned samples (partial responses
# ranked by the value models every PRUNE_BLOCK tokens, the top PRUNE_KEEP fraction continued),
# or guided (VAS) samples.
BEST_OF_MODES = ("plain", "pruned", "guided")
PRUNE_BLOCK = 16
PRUNE_KEEP = 0.5

# Upstream
PROVIDER = "llamacpp"
CONTINUATION = "auto"  # the first of the profile's strategies that applies (prompting.py)
# Seconds per upstream call. One value for every command: a one-slot server (llama.cpp) queues
# concurrent requests and a queued request's timeout runs while it waits.
TIMEOUT = 120.0
WRAP_TIMEOUT = 600.0  # `wrap` of a client whose timeout has no read part (the SDK's own default)

# The response cache (a directory or redis://): seconds an entry lives
CACHE_TTL = 30 * 24 * 3600.0

# Generation
MAX_TOKENS = 64  # `vas-proxy generate`
TEMPERATURE = 1.0  # `vas-proxy generate`
TOP_P = 1.0  # `vas-proxy generate`
COMPLETION_MAX_TOKENS = 16  # `/v1/completions` without max_tokens (OpenAI's default)
CHAT_MAX_TOKENS = 256  # `/v1/chat/completions` without max_tokens
MAX_N = 16  # choices per request (`n`)

# Service limits (`vas-proxy serve --limit-*`; `wrap` runs in the caller's process, unlimited):
# what one request may ask of the upstream and the host. Over a limit: 400 (or 413 for the
# body); over the concurrency limit: 429 with Retry-After.
LIMIT_MAX_TOKENS = 4096  # max_tokens per choice
LIMIT_BODY_BYTES = 4 * 2**20  # request body (a prompt is re-sent with every upstream call)
LIMIT_PROMPT_CHARS = 200_000  # prompt, or all messages' text together
LIMIT_GENERATIONS = 64  # generations in flight over all requests (a choice of Best-of-N counts N)
LIMIT_DEADLINE = 600.0  # seconds a request may run before it is cancelled (504)
SHUTDOWN_GRACE = 15.0  # seconds SIGTERM waits for requests in flight before cancelling them

# Value models
DEVICE = "cpu"
DTYPES = ("float32", "bfloat16", "float16")  # --dtype choices (None: float32 on CPU)

# Service
HOST = "127.0.0.1"
PORT = 8000
LOG_LEVEL = "info"
LOG_LEVELS = ("debug", "info", "warning", "error")

# `vas-proxy eval`, `train` and `demo` (training hyperparameters live in train/config.py's
# TrainConfig, their one definition, saved with every checkpoint)
SEED = 0  # eval, train and demo: runs are seeded unless told otherwise
CONCURRENCY = 2  # upstream requests in flight (eval)
# train: requests in flight, and the embedded llama-server's slots (docs/bench/rollouts.json:
# 4 slots sample 6.1x the rollouts per minute of the old one-slot server on 2 cores)
TRAIN_CONCURRENCY = 4
# train: samples per prompt without --samples-per-prompt or --budget. 6 -> 16 raised the
# positivity model's held-out correlation from 0.47 to 0.71 (README); on llama-server
# 16 x 32 prompts take ~4 minutes
TRAIN_SAMPLES = 16
EVAL_MAX_TOKENS = 64
EVAL_BETAS = (0.0, 0.5, 1.0, 2.0, 4.0)  # 0 is base sampling
EVAL_BEST_OF = (1, 4, 16)
EVAL_SAMPLES = 1  # responses per prompt and setting
# Price tables the eval reports costs under (vas_proxy/prices.py; FILE.json for one's own)
EVAL_PRICES = ("flat", "out4", "out4-prefix", "openai")
# `vas-proxy baseline rl` (the RL baselines, TRL). Betas as their papers use them: DPO's 0.1
# (Rafailov et al.; TRL's default), GRPO's KL coefficient 0.04 (DeepSeekMath).
DPO_BETA = 0.1
GRPO_BETA = 0.04
RL_LR = 1e-4  # LoRA adapters take ~10x full fine-tuning's rate
DPO_EPOCHS = 3
DPO_BATCH = 8
GRPO_STEPS = 100
GRPO_GENERATIONS = 4
GRPO_PROMPTS_PER_STEP = 2
DEMO_PROMPTS = 3  # built-in prompts shown
DEMO_MAX_TOKENS = 32
DEMO_BETA = 4.0  # the bundled models move their reward clearly only from about here up
DEMO_BEST_OF = 4
DEMO_SPECULATE = -1  # adaptive: exact, fewer upstream calls
