"""Held-out validation the way the VAS authors validate a value model.

Each held-out response is cut in half; the model's value of `prompt + half` is compared with
the mean reward of several fresh upstream completions of that half (an unbiased estimate of
the true value). Also reported: the value of the whole response against its actual reward, and
the MSE of always predicting the mean target (the bar a useful model must clear).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..values.model import ValueModel, encode
from .rollouts import HalfCompletions, Rollout


def predict_last(model: ValueModel, tokenizer, texts: list[str], *,
                 batch_size: int = 16) -> list[float]:
    """V(text) for each text: the value at its last token, under the model's own tokenizer."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                seqs = [encode(tokenizer, t) for t in texts[i:i + batch_size]]
                width = max(len(s) for s in seqs)
                ids = torch.full((len(seqs), width), pad, dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for row, s in enumerate(seqs):
                    ids[row, :len(s)] = torch.tensor(s)
                    mask[row, :len(s)] = 1
                values, _ = model(ids.to(model.device), attention_mask=mask.to(model.device))
                last = torch.tensor([len(s) - 1 for s in seqs], device=values.device)
                out.extend(values[torch.arange(len(seqs), device=values.device), last].tolist())
    finally:
        model.train(was_training)
    return out


def regression_metrics(pred: list[float], target: list[float], prefix: str) -> dict:
    """MSE, Pearson correlation (None when either side is constant) and the mean-predictor MSE."""
    p, t = np.asarray(pred, dtype=float), np.asarray(target, dtype=float)
    if not len(t):
        return {}
    corr = None
    if len(t) > 1 and p.std() > 1e-12 and t.std() > 1e-12:
        corr = float(np.corrcoef(p, t)[0, 1])
    return {f"{prefix}_mse": float(np.mean((p - t) ** 2)), f"{prefix}_corr": corr,
            f"{prefix}_baseline_mse": float(np.var(t)), f"{prefix}_n": int(len(t))}


def within_prompt_corr(pred: list[float], target: list[float], groups: list[int],
                       prefix: str) -> dict:
    """Correlation after removing each prompt's mean from both sides: what guidance uses.

    Guidance compares candidates of one state, so a model that only knows which prompts score
    high (a cooking question makes any answer "about cooking") can correlate well across
    prompts and still not guide. Only prompts with at least two responses count."""
    p, t, g = (np.asarray(x, dtype=float) for x in (pred, target, groups))
    keep = np.array([np.sum(g == k) >= 2 for k in g], dtype=bool)
    if keep.sum() < 3:
        return {}
    p, t, g = p[keep], t[keep], g[keep]
    for k in np.unique(g):
        m = g == k
        p[m] -= p[m].mean()
        t[m] -= t[m].mean()
    corr = float(np.corrcoef(p, t)[0, 1]) if p.std() > 1e-12 and t.std() > 1e-12 else None
    return {f"{prefix}_within_corr": corr, f"{prefix}_within_n": int(keep.sum())}


def _values(model: ValueModel, tokenizer, prompts: list[str], texts: list[str],
            potential=None) -> list[float]:
    """V(prompt + text) as the model is used: plus `potential` (a `--residual` model's reward
    read on the text so far) where there is one."""
    out = predict_last(model, tokenizer, [p + t for p, t in zip(prompts, texts)])
    if potential is None:
        return out
    return [u + phi for u, phi in zip(out, potential(prompts, texts))]


def half_predictions(model: ValueModel, tokenizer, rollouts: list[Rollout],
                     halves: list[HalfCompletions], spec: str, *,
                     potential=None) -> tuple[list[float], list[float]]:
    """Each held-out half's value and its target (the mean reward of its completions)."""
    by_key = {r.key: r for r in rollouts}
    preds = _values(model, tokenizer, [by_key[h.key].upstream_prompt for h in halves],
                    [h.half for h in halves], potential)
    return preds, [float(np.mean(h.rewards[spec])) for h in halves]


def evaluate(model: ValueModel, tokenizer, rollouts: list[Rollout],
             halves: list[HalfCompletions], spec: str, *, potential=None) -> dict:
    """Validation metrics on held-out rollouts and their half-completions. `potential`: the
    reward a `--residual` model's output is added to, read on the text so far."""
    metrics: dict = {}
    if halves:
        preds, targets = half_predictions(model, tokenizer, rollouts, halves, spec,
                                          potential=potential)
        metrics.update(regression_metrics(preds, targets, "val_half"))
        metrics.update(within_prompt_corr(preds, targets, [h.prompt_index for h in halves],
                                          "val_half"))
    if rollouts:
        preds = _values(model, tokenizer, [r.upstream_prompt for r in rollouts],
                        [r.response for r in rollouts], potential)
        targets = [r.rewards[spec] for r in rollouts]
        metrics.update(regression_metrics(preds, targets, "val_final"))
        metrics.update(within_prompt_corr(preds, targets, [r.prompt_index for r in rollouts],
                                          "val_final"))
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in metrics.items()}
