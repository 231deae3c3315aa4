"""Phase 1 of `vas-proxy train`: what is sampled through the black box. Rollouts for every
prompt (and branches of them), the held-out prompts' half-completions, and the upstream they
come from, started only when a sample is missing. Stored, seeded and reused (rollouts.py), so
a resumed run samples only what it lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import numpy as np

from .config import TrainConfig


def rollout_top_k(cfg: TrainConfig) -> int:
    """Candidates each rollout position stores: the top-k `--consistency` and `--branches`
    use, else 1 (the sampled token's logprob) or 0 (`--no-logprobs`)."""
    wanted = [cfg.consistency_k if cfg.consistency else 0, cfg.branch_k if cfg.branches else 0]
    return max(wanted) if max(wanted) else int(not cfg.no_logprobs)


def heldout_prompts(n: int, frac: float, seed: int) -> set[int]:
    """Prompt indices held out for validation: a seeded draw of round(frac * n) (>= 1 when
    frac > 0 and at least 2 prompts, so something is always left to train on)."""
    k = int(round(frac * n))
    if frac > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    return set(np.random.default_rng([seed, 11]).permutation(n)[:k].tolist())


class LazyUpstream:
    """The upstream client, started on the first request: a resumed run whose samples are all
    stored never starts the embedded server (or calls a remote one).

    Only `model` and `complete` are used by the samplers; `model` must be known up front: the
    embedded server's alias, --model, or (remote upstream without --model) asked for at once.

    llama-cpp-python's memory grows with every request (measured: +11.7 MiB per call,
    12.8 GB after ~4,500 calls): its RAM state cache (`--cache true`) bounds only the KV bytes
    of the states it keeps, not the n_tokens x n_vocab float32 logits each state also holds.
    So the server is restarted on the same port after every `recycle_every` requests, once the
    requests in flight have finished.
    """

    def __init__(self, cfg: TrainConfig, api_key: str | None, stack: contextlib.AsyncExitStack,
                 recycle_every: int = 100):
        from ..upstream.local import LOCAL_MODEL_NAME

        self.cfg, self.api_key, self.stack = cfg, api_key, stack
        self.model = cfg.model or (LOCAL_MODEL_NAME if cfg.upstream is None else None)
        self.recycle_every = recycle_every
        self._client = None
        self._local = None
        self._served = self._inflight = 0
        self._ready = asyncio.Event()
        self._ready.set()

    async def client(self):
        # No await between the check and the assignment: concurrent first calls start one.
        if self._client is None:
            from .. import progress
            from ..upstream.client import UpstreamClient
            from ..upstream.local import LocalUpstream, default_server

            base_url, provider = self.cfg.upstream, self.cfg.provider
            if base_url is None:
                # as many slots as requests in flight: llama-server samples them in parallel
                self._local = LocalUpstream(server=self.cfg.embedded or default_server(),
                                            slots=self.cfg.concurrency, model_alias=self.model)
                with progress.step("starting the embedded SmolLM2 upstream",
                                   enabled=not self.cfg.quiet):
                    self.stack.enter_context(self._local)
                base_url, provider = self._local.base_url, self._local.profile
            # Our JSONL files are the record of what was sampled: no response cache needed.
            client = UpstreamClient(base_url, self.model or "default", api_key=self.api_key,
                                    profile=provider, timeout=self.cfg.timeout,
                                    use_cache=False)
            self.stack.push_async_callback(client.aclose)
            self._client = client
        return self._client

    async def resolve_model(self) -> None:
        from ..errors import ConfigError

        if self.model is None:
            models = await (await self.client()).models()
            if not models:
                raise ConfigError(f"upstream {self.cfg.upstream} lists no model; pass --model")
            self.model = self._client.model = models[0]

    async def complete(self, *args, **kwargs):
        await self._ready.wait()
        client = await self.client()
        self._inflight += 1
        try:
            return await client.complete(*args, **kwargs)
        finally:
            self._inflight -= 1
            self._served += 1
            if self._local is not None and self._local.server == "llama-cpp-python" \
                    and self._served >= self.recycle_every:
                self._ready.clear()  # new requests wait for the restart
                if self._inflight == 0:
                    self._local.stop()
                    self._local.start()  # same port: the client's base URL stays valid
                    self._served = 0
                    self._ready.set()


async def collect(cfg: TrainConfig, out: Path, items: list[dict], api_key: str | None):
    """Phase 1: rollouts for every prompt and half-completions of the held-out ones."""
    from ..assets import smollm2_gguf
    from ..templates import from_gguf, from_props, load_template
    from .prompts import render_prompts
    from .rollouts import (BRANCHES_FILE, ROLLOUTS_FILE, VALIDATION_FILE, HalfCompletions,
                           JsonlStore, Rollout, sample_half_completions, sample_rollouts)

    template = load_template(cfg.chat_template) if cfg.chat_template else None
    if cfg.upstream is None:
        template = template or from_gguf(str(smollm2_gguf()))
    async with contextlib.AsyncExitStack() as stack:
        upstream = LazyUpstream(cfg, api_key, stack)
        await upstream.resolve_model()
        client = await upstream.client()
        if template is None and client.profile.tokenizer_routes:  # its own, from /props
            template = from_props(await client.props())
        prompts = render_prompts(items, template)
        stop = template.stop_strings if template else []
        rollouts = await sample_rollouts(
            upstream, prompts, samples=cfg.samples_per_prompt, max_tokens=cfg.max_tokens,
            seed=cfg.seed, stop=stop, store=JsonlStore(out / ROLLOUTS_FILE, Rollout),
            concurrency=cfg.concurrency, progress=not cfg.quiet, top_k=rollout_top_k(cfg))
        held = heldout_prompts(len(prompts), cfg.heldout_frac, cfg.seed)
        branches = []
        if cfg.branches:
            from .branches import sample_branches
            branches = await sample_branches(
                upstream, [r for r in rollouts if r.prompt_index not in held],
                per_prompt=cfg.branches, k=cfg.branch_k, max_tokens=cfg.max_tokens,
                seed=cfg.seed, stop=stop, store=JsonlStore(out / BRANCHES_FILE, Rollout),
                concurrency=cfg.concurrency, progress=not cfg.quiet)
        held_rollouts = [r for r in rollouts if r.prompt_index in held]
        halves = []
        if cfg.val_completions:
            halves = await sample_half_completions(
                upstream, held_rollouts, k=cfg.val_completions, max_tokens=cfg.max_tokens,
                seed=cfg.seed, stop=stop, store=JsonlStore(out / VALIDATION_FILE, HalfCompletions),
                concurrency=cfg.concurrency, progress=not cfg.quiet)
        return rollouts, branches, held, halves, upstream.model
