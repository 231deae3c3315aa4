"""Does the trained value model know anything? Held-out quality against the mean predictor,
and a plain verdict with its likely cause and what to do.

A value model no better than predicting the mean reward cannot guide: exp(beta * V) then
re-weights candidates by noise, and guidance pays KL for nothing. So `train` says which case
it is, every epoch and at the end, instead of leaving the user to find out in an evaluation.

The figures (docs/design.md §1.4): on held-out half-responses, the MSE of V against the mean
reward of fresh completions of the half, as a ratio to the MSE of the best constant (the
targets' variance: a ratio of 1 is "knows nothing"), and the Pearson correlation with its 95%
interval (Fisher z). The same on final responses against their own reward. Half-responses
decide: guidance acts on partial responses, and a final response's reward is visible in its
text, which makes the final figures the easier test. Also shown: the correlation within
prompts (each prompt's mean removed), the part guidance uses. The bundled personal model
scored "guides" on the figures above (0.62 across prompts, 0.40 within) and moved its reward
by only 0.9 s.e. at beta 4 (README): one case, enough for a caution on a low within-prompt
figure (`WITHIN_CAUTION`), not for a threshold of the label. A verdict is a floor, not a
promise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

# Thresholds on the half-response figures, set from the models we know: the bundled
# positivity model (ratio 0.55, corr 0.71) moves its reward by > 3 s.e. at beta 2 to 4; the
# bundled plain model (0.89, 0.34) moves its reward by less than Best-of-4; a sparse
# personalisation model (1.03, 0.16) did not move it at all.
GUIDES_RATIO, GUIDES_CORR = 0.8, 0.5
WEAK_RATIO = 0.97  # at or above: indistinguishable from the mean predictor
GUIDES, WEAK, MEAN = "guides", "weak", "no better than the mean"
UNVALIDATED = "not validated"
# Causes' triggers
SPARSE_SHARE = 0.8  # the most common reward value holds at least this share of rollouts...
SPARSE_RARE = 200  # ...and fewer rollouts than this score anything else
FEW_PROMPTS = 50  # training prompts: a value model must generalise across prompts
FEW_HELDOUT = 40  # held-out half-responses behind the figures
UNDERFIT_DROP = 0.10  # the training loss fell less than this fraction
# The held-out half-response correlation after each epoch says more than the training loss:
# a loss that fell 60% once read as over-fitting on a model whose held-out figures 3 more
# epochs then raised from 0.32 to 0.46 (docs/training/ablation/, `epochs6`). Epoch-to-epoch
# moves on a plateau were within ±0.045 there (vader 0.44, 0.49, 0.46 over epochs 4-6).
RISING = 0.05  # the last epoch raised it by at least this: still learning, train longer
FALLING = 0.05  # it ended at least this far below its best epoch: over-fit
# Both were read on 128 held-out halves; a correlation's noise grows as 1/√n, so on fewer
# halves they grow alike (64 halves: 0.071; epoch-to-epoch moves of ±0.09 were seen there,
# docs/training/steps/), and never fall below the measured 0.05 on more.
TREND_HALVES = 128
# Within-prompt correlation below this earns a "guides" model a caution, not a lower label:
# one known case sets it (the bundled personal model, 0.40 within, moved its reward by 0.9
# s.e. at beta 4), too few to draw the line the label would need.
WITHIN_CAUTION = 0.45


def corr_interval(r: float | None, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """95% interval of a Pearson correlation (Fisher z; None for n < 4 or no correlation)."""
    if r is None or n < 4:
        return None
    r = min(max(r, -0.999999), 0.999999)
    centre, half = math.atanh(r), z / math.sqrt(n - 3)
    return math.tanh(centre - half), math.tanh(centre + half)


def quality(metrics: dict, prefix: str) -> dict | None:
    """MSE ratio, correlation and its interval for `val_half` or `val_final` metrics."""
    mse, base = metrics.get(f"{prefix}_mse"), metrics.get(f"{prefix}_baseline_mse")
    n = int(metrics.get(f"{prefix}_n") or 0)
    if mse is None or not n:
        return None
    ratio = mse / base if base and base > 1e-12 else None
    corr = metrics.get(f"{prefix}_corr")
    return {"ratio": ratio, "corr": corr, "corr_ci": corr_interval(corr, n), "n": n}


def describe_quality(metrics: dict) -> str:
    """One line: held-out quality on half and final responses, against the mean predictor."""
    parts = []
    for prefix, label in (("val_half", "half-responses"), ("val_final", "final responses")):
        q = quality(metrics, prefix)
        if q is None:
            continue
        ratio = "n/a" if q["ratio"] is None else f"{q['ratio']:.2f}"
        corr = "n/a" if q["corr"] is None else f"{q['corr']:.2f}"
        ci = q["corr_ci"]
        corr += f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
        within = metrics.get(f"{prefix}_within_corr")
        corr += "" if within is None else f", within prompts {within:.2f}"
        parts.append(f"{label} (n={q['n']}): MSE {ratio}× the mean predictor's, corr {corr}")
    return "; ".join(parts) if parts else "no held-out validation"


@dataclass
class DataStats:
    """What the training data and the fit looked like: the inputs of the causes."""

    rollouts: int
    prompts: int
    mode_share: float  # share of rollouts holding the most common reward value
    mode_value: float
    rare: int  # rollouts scoring anything but the most common value
    loss_start: float | None = None  # mean training loss over the first 10% of steps
    loss_end: float | None = None  # ... and over the last 10%
    heldout_corrs: list[float | None] = field(default_factory=list)  # half-response, by epoch


def data_stats(rewards: list[float], prompt_indices: list[int], train_losses: list[float],
               heldout_corrs: list[float | None] = ()) -> DataStats:
    r = np.round(np.asarray(rewards, dtype=float), 9)
    values, counts = np.unique(r, return_counts=True)
    top = int(np.argmax(counts)) if len(counts) else 0
    share = float(counts[top] / len(r)) if len(r) else 0.0
    start = end = None
    if train_losses:
        k = max(1, len(train_losses) // 10)
        start, end = float(np.mean(train_losses[:k])), float(np.mean(train_losses[-k:]))
    return DataStats(len(r), len(set(prompt_indices)), share,
                     float(values[top]) if len(values) else 0.0,
                     int(len(r) - (counts[top] if len(counts) else 0)), start, end,
                     [None if c is None else float(c) for c in heldout_corrs])


@dataclass
class Verdict:
    label: str
    quality: str
    causes: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    cautions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        lines = [f"verdict: {self.label} ({self.quality})"]
        lines += [f"  likely cause: {c}" for c in self.causes]
        lines += [f"  to do: {a}" for a in self.advice]
        lines += [f"  caution: {c}" for c in self.cautions]
        return "\n".join(lines)


def judge(metrics: dict, stats: DataStats, *, samples_per_prompt: int | None = None,
          reward_alone: dict | None = None) -> Verdict:
    """The verdict on a trained value model from its last held-out validation. `reward_alone`:
    a `--residual` run's untrained validation (the reward read on the text so far plus a
    constant), the bar its model has to clear (docs/design.md §1.12)."""
    q = quality(metrics, "val_half") or quality(metrics, "val_final")
    line = describe_quality(metrics)
    alone = quality(reward_alone or {}, "val_half")
    if alone and alone["ratio"] is not None and alone["corr"] is not None:
        line += (f"; the reward alone on the text so far: half-responses MSE "
                 f"{alone['ratio']:.2f}× the mean predictor's, corr {alone['corr']:.2f}")
    if q is None:
        return Verdict(UNVALIDATED, line, ["nothing was held out (--heldout-frac 0)"],
                       ["hold out prompts (--heldout-frac 0.1) to learn whether it can guide"])
    ratio, corr, ci = q["ratio"], q["corr"], q["corr_ci"]
    if ratio is None or corr is None or ratio >= WEAK_RATIO or (ci is not None and ci[0] <= 0):
        label = MEAN
    elif ratio <= GUIDES_RATIO and corr >= GUIDES_CORR:
        label = GUIDES
    else:
        label = WEAK
    causes, advice, cautions = [], [], []
    if label != GUIDES:
        _causes(stats, q, label, samples_per_prompt, causes, advice)
    elif _trend(stats.heldout_corrs, q["n"])[0] == "rising":
        advice.append(_RISING_ADVICE)
    within = metrics.get("val_half_within_corr")
    if label == GUIDES and within is not None and within < WITHIN_CAUTION:
        cautions.append(f"within prompts its correlation is only {within:.2f}: much of what it "
                        "knows is which prompt it is, which guidance cannot use (a model at "
                        "0.62 across and 0.40 within prompts moved its reward by 0.9 s.e. at "
                        "beta 4); measure it with `vas-proxy eval` before relying on it")
    if (alone and alone["ratio"] is not None and q["ratio"] is not None
            and q["ratio"] >= alone["ratio"]):
        cautions.append("the trained part adds nothing held out to the reward read on the text "
                        "so far: `--value NAME=reward:SPEC` does as well with no model")
    return Verdict(label, line, causes, advice, cautions)


def _causes(s: DataStats, q: dict, label: str, samples_per_prompt: int | None,
            causes: list[str], advice: list[str]) -> None:
    more = (f"--samples-per-prompt {4 * samples_per_prompt}" if samples_per_prompt
            else "more --samples-per-prompt")
    if s.mode_share >= SPARSE_SHARE and s.rare < SPARSE_RARE:
        causes.append(f"too few rewarded samples: {s.rare} of {s.rollouts} training rollouts "
                      f"({1 - s.mode_share:.1%}) score other than {s.mode_value:g}")
        advice.append(f"sample more per prompt ({more}, or a larger --budget) until a few "
                      "hundred rollouts score differently")
    if s.prompts < FEW_PROMPTS:
        causes.append(f"too few prompts: {s.prompts} trained on; a value model must generalise "
                      "to prompts it has not seen")
        advice.append(f"add prompts (at least {FEW_PROMPTS}, a few hundred is better)")
    trend, text = _trend(s.heldout_corrs, q["n"])
    if s.loss_start and s.loss_end is not None and trend != "rising":
        drop = 1 - s.loss_end / s.loss_start
        if drop < UNDERFIT_DROP:
            moved = f"rose {-drop:.0%}" if drop < 0 else f"fell only {drop:.0%}"
            causes.append(f"under-fit: the training loss {moved} "
                          f"({s.loss_start:.4g} → {s.loss_end:.4g})")
            advice.append("train longer (--epochs) or at a higher --lr")
    if trend == "rising":
        causes.append(f"under-fit: {text}")
        advice.append(_RISING_ADVICE)
    elif trend == "falling":
        causes.append(f"over-fit: {text}")
        advice.append(f"fewer epochs (a lower --epochs and --min-steps), or more data ({more}, "
                      "more prompts)")
    if q["n"] < FEW_HELDOUT:
        causes.append(f"the held-out figures rest on {q['n']} responses: they are uncertain")
        advice.append("hold out more prompts (--heldout-frac) before trusting either verdict")
    if not causes:
        causes.append("none of the data's or the fit's usual causes: the reward may depend on "
                      "what the backbone cannot see in a partial response")
        advice.append(f"more samples per prompt ({more}) or more prompts")


_RISING_ADVICE = ("train longer: the held-out figures were still rising (a higher --epochs or "
                  "--min-steps with --resume continues this run)")


def _trend(corrs: list[float | None], n: int) -> tuple[str | None, str]:
    """'rising' when the last epoch raised the held-out half-response correlation by RISING,
    'falling' when it ended FALLING below its best epoch, else None; and a line saying so.
    On fewer than TREND_HALVES halves (n) both bars grow as 1/√n."""
    known = [(i + 1, c) for i, c in enumerate(corrs) if c is not None and math.isfinite(c)]
    if len(known) < 2:
        return None, ""
    scale = max(1.0, math.sqrt(TREND_HALVES / n)) if n > 0 else 1.0
    (_, before), (_, last) = known[-2:]
    best_epoch, best = max(known, key=lambda e: e[1])
    if last - before >= RISING * scale:
        return "rising", (f"the held-out correlation rose {before:.2f} → {last:.2f} over the "
                          "last epoch")
    if best - last >= FALLING * scale:
        return "falling", (f"the held-out correlation peaked at {best:.2f} (epoch {best_epoch}) "
                           f"and ended at {last:.2f}")
    return None, ""
