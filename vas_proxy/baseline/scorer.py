"""A tuned model's distance from the base, measured with the weights (which only the RL baseline
has): KL to the base on its own samples, and log-likelihoods of any text under either model.

KL is summed over the response's steps, each step exact over the whole vocabulary:
Σₜ KL(π_tuned(·|y<t) ‖ π_base(·|y<t)), an unbiased estimate of the sequence KL when y is sampled
from the tuned model, with far less variance than Σₜ log π_tuned(yₜ) − log π_base(yₜ) (the
estimate VAS's rows use, which the top-k upstream allows). Both models are the dequantized
GGUF in float32, the base with the adapter switched off; the served model computes in llama.cpp's
quantized arithmetic, so the two agree to quantization noise (tests/test_baseline.py measures it).
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch


class TunedScorer:
    """Load once, score many (thread-safe: one forward at a time)."""

    def __init__(self, adapter_dir: str | Path):
        from .policy import load_tokenizer, load_tuned

        self.model = load_tuned(adapter_dir)
        self.tokenizer = load_tokenizer()
        self._lock = threading.Lock()

    def _ids(self, prompt: str, response: str, stopped: bool) -> tuple[list[int], int]:
        tok = self.tokenizer
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        if not p:
            raise ValueError("scoring needs a prompt (the first token has no prediction)")
        r = tok(response, add_special_tokens=False)["input_ids"]
        return p + r + ([tok.eos_token_id] if stopped else []), len(p)

    @torch.no_grad()
    def _logprobs(self, ids: list[int], start: int, tuned: bool) -> torch.Tensor:
        """log π(·|y<t) for every position t ≥ start that predicts a token of `ids`."""
        x = torch.tensor([ids])
        if tuned:
            logits = self.model(input_ids=x).logits
        else:
            with self.model.disable_adapter():
                logits = self.model(input_ids=x).logits
        return torch.log_softmax(logits[0, start - 1:-1].float(), dim=-1)

    def kl(self, prompt: str, response: str, stopped: bool = False) -> float:
        """Σ over the response's tokens (and its end of turn, if it stopped) of the exact
        per-step KL(tuned ‖ base)."""
        ids, start = self._ids(prompt, response, stopped)
        if len(ids) == start:
            return 0.0
        with self._lock:
            lq = self._logprobs(ids, start, tuned=True)
            lp = self._logprobs(ids, start, tuned=False)
        return float((lq.exp() * (lq - lp)).sum())

    def loglik(self, prompt: str, text: str, *, tuned: bool) -> tuple[float, int]:
        """(Σ log π(text | prompt), token count) under the tuned model or the base."""
        ids, start = self._ids(prompt, text, False)
        if len(ids) == start:
            return 0.0, 0
        with self._lock:
            lp = self._logprobs(ids, start, tuned=tuned)
        target = torch.tensor(ids[start:])
        return float(lp.gather(1, target[:, None]).sum()), len(target)
