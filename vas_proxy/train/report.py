"""Training curves as a PNG, drawn from metrics.jsonl (matplotlib, Agg backend: no display).

matplotlib is optional (a dev extra): without it the curves are skipped with a note; the
metrics file holds the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

CURVES_FILE = "curves.png"


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def first_validation(path: str | Path) -> dict | None:
    """The validation of the untrained model (step 0), None when there was none."""
    return next((r for r in read_metrics(path)
                 if r.get("kind") == "validation" and r.get("step") == 0), None)


def train_losses(path: str | Path) -> list[float]:
    """The loss of every optimiser step, in order (metrics.jsonl survives resumes)."""
    return [r["loss"] for r in read_metrics(path)
            if r.get("kind") == "train" and r.get("loss") is not None]


def heldout_corrs(path: str | Path) -> list[float | None]:
    """The held-out half-response correlation after each epoch of training, in order (the
    untrained model's step-0 validation left out): what the verdict reads its trend from."""
    return [r.get("val_half_corr") for r in read_metrics(path)
            if r.get("kind") == "validation" and (r.get("epoch") or 0) >= 1]


def _ema(xs: list[float], alpha: float = 0.1) -> list[float]:
    out, acc = [], None
    for x in xs:
        acc = x if acc is None else (1 - alpha) * acc + alpha * x
        out.append(acc)
    return out


def write_curves(metrics_path: str | Path, png_path: str | Path) -> Path | None:
    """Loss (raw and smoothed), learning rate, and held-out validation vs step."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "validation"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if train:
        steps = [r["step"] for r in train]
        losses = [r["loss"] for r in train]
        axes[0].plot(steps, losses, alpha=0.3, label="loss")
        axes[0].plot(steps, _ema(losses), label="loss (EMA)")
        axes[1].plot(steps, [r["lr"] for r in train])
        axes[0].legend()
    axes[0].set(title="TD(λ) loss (0.5·MSE)", xlabel="step")
    axes[1].set(title="learning rate", xlabel="step")
    for key, label in (("val_half_mse", "half-response value MSE"),
                       ("val_half_baseline_mse", "mean-predictor MSE"),
                       ("val_final_mse", "final value vs reward MSE")):
        pts = [(r["step"], r[key]) for r in val if r.get(key) is not None]
        if pts:
            axes[2].plot(*zip(*pts), marker="o", label=label)
    pts = [(r["step"], r["val_half_corr"]) for r in val if r.get("val_half_corr") is not None]
    if pts:
        twin = axes[2].twinx()
        twin.plot(*zip(*pts), marker="s", color="tab:red", label="half-response corr")
        twin.set_ylabel("correlation", color="tab:red")
    axes[2].set(title="held-out validation", xlabel="step")
    if val:
        axes[2].legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    out = Path(png_path)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
