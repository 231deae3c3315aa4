"""The optimisation loop: TD(lambda) on stored rollouts, AdamW, gradient accumulation,
checkpoints and exact resumption.

Run directory files written here:
    train_state.pt          step, epoch position, trainable weights, optimiser and scheduler
                            state (torch.save of tensors and plain types: loaded with
                            weights_only=True, so no pickled code runs on resume)
    checkpoints/step-N/     periodic value-model checkpoints (`save_checkpoint` layout)
    vas_value.json, ...     the final value model at the top of the run directory
    metrics.jsonl           one line per optimiser step and per validation
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..values.model import ValueModel
from ..values.store import save_checkpoint
from .config import FIT_OPTIONS, TrainConfig, check_fit
from .consistency import collate_tree, consistency_loss
from .td import Example, collate, lambda_returns, rare_weights, td_loss

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
WARMUP_FRAC = 0.05


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


@dataclass
class Progress:
    """Where training stands: optimiser steps done, and the next micro-batch of which epoch."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


def epochs_for(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """--epochs, or more where --min-steps needs them (never from 0: sampling only)."""
    if cfg.epochs == 0 or steps_per_epoch <= 0:
        return cfg.epochs
    return max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))


def check_resume(cfg: TrainConfig, out: Path) -> None:
    """`check_fit` before anything is sampled or written, where a saved state exists."""
    path = out / STATE_FILE
    if path.is_file():
        check_fit(cfg, torch.load(path, map_location="cpu", weights_only=True), out)


class Trainer:
    """Fits `model` to the lambda-returns of `examples` for `epochs_for(cfg)` epochs.

    The "old values" of the targets are the values of the parameters before the current
    optimiser step: the forward pass's own values, detached. With no dropout (LoRA dropout 0,
    Llama attention dropout 0) they equal a separate no-grad pass, at no extra cost.
    """

    def __init__(self, cfg: TrainConfig, model: ValueModel, tokenizer, examples: list[Example],
                 out: Path, *, evaluate: Callable[[ValueModel], dict] | None = None,
                 judge: Callable[[dict, list[float]], dict] | None = None,
                 metadata: dict | None = None):
        if not examples:
            raise ConfigError("no training rollouts: add prompts or lower --heldout-frac")
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.out = Path(out)
        # --standardize: fit z-scores; `reward_units` maps the head back for saving/validating
        rewards = np.array([e.reward for e in examples], dtype=float)
        self.target_mean, self.target_sd = 0.0, 1.0
        if cfg.standardize and rewards.std() > 1e-12:
            self.target_mean, self.target_sd = float(rewards.mean()), float(rewards.std())
            examples = [dataclasses.replace(  # phi scaled, not shifted: U = sd·U_z + mean
                e, reward=(e.reward - self.target_mean) / self.target_sd,
                potential=[p / self.target_sd for p in e.potential]) for e in examples]
        if cfg.rare_weight:
            weights = rare_weights([e.reward for e in examples], cfg.rare_weight)
            examples = [dataclasses.replace(e, weight=w) for e, w in zip(examples, weights)]
        self.examples = examples
        self.evaluate = evaluate
        self.judge = judge  # (last validation, training losses) -> the verdict, saved with it
        self.metadata = dict(metadata or {})
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        self.micro_per_epoch = math.ceil(len(examples) / cfg.batch_size)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.grad_accum)
        self.epochs = epochs_for(cfg, self.steps_per_epoch)
        self.total_steps = self.steps_per_epoch * self.epochs
        self.params = trainable(model)
        head = [p for n, p in self.params if n.startswith("head.")]
        body = [p for n, p in self.params if not n.startswith("head.")]
        groups = [{"params": body, "lr": cfg.lr},
                  {"params": head, "lr": cfg.lr * cfg.head_lr_mult, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]],
                                           weight_decay=cfg.weight_decay)
        warmup = max(1, int(WARMUP_FRAC * self.total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: _lr_factor(s, warmup, self.total_steps))
        self.progress = Progress()
        self.last_validation: dict = {}
        self._start_at_mean_reward()

    def _start_at_mean_reward(self) -> None:
        """Zero head weights, bias = the mean training reward (`--residual`: of reward - phi
        on the response, as the model is U = V - phi): training starts from the mean predictor.
        Adam moves a parameter by about lr per step, so a zero bias takes hundreds of steps to
        reach an offset like -1.5 (the `plain` reward), time the body then spends fitting the
        offset instead of what distinguishes tokens. (`restore` overwrites this on resume.)"""
        start = [e.reward - (float(np.mean(e.potential[e.start:])) if e.potential else 0.0)
                 for e in self.examples]
        with torch.no_grad():
            self.model.head.weight.zero_()
            self.model.head.bias.fill_(float(np.mean(start)))

    # -- state ----------------------------------------------------------------------------

    def save_state(self) -> None:
        state = {"progress": vars(self.progress).copy(),
                 "trainable": {n: p.detach().cpu() for n, p in self.params},
                 "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(),
                 **{k: getattr(self.cfg, k) for k in FIT_OPTIONS}}
        tmp = self.out / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.out / STATE_FILE)

    def restore(self) -> bool:
        """Load train_state.pt when present: weights, optimiser, scheduler, step count."""
        path = self.out / STATE_FILE
        if not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)
        check_fit(self.cfg, state, self.out)
        names = {n for n, _ in self.params}
        if set(state["trainable"]) != names:
            raise ConfigError(f"{path}: its weights do not match this model; use another --out")
        with torch.no_grad():
            for n, p in self.params:
                p.copy_(state["trainable"][n].to(p.device, p.dtype))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = Progress(**state["progress"])
        self._forget_metrics_after(self.progress.step)
        return True

    def _forget_metrics_after(self, step: int) -> None:
        """Drop metrics logged after the restored state (steps that will be redone) and recall
        the last validation."""
        path = self.out / METRICS_FILE
        if not path.is_file():
            return
        keep = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and _step_of(line) <= step]
        path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        for line in reversed(keep):  # the checkpoints' metadata carries the last validation
            record = json.loads(line)
            if record.get("kind") == "validation":
                self.last_validation = {k: v for k, v in record.items()
                                        if k not in ("kind", "step", "epoch")}
                break

    def save_checkpoint(self, path: Path) -> Path:
        from transformers.utils import logging as hf_logging

        meta = {**self.metadata, "step": self.progress.step, "epoch": self.progress.epoch,
                "args": self.cfg.to_dict(), "validation": self.last_validation}
        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # its "Writing model shards" bar breaks ours
        try:
            with self.reward_units() as model:
                return save_checkpoint(model, self.tokenizer, path, metadata=meta)
        finally:
            if shown:
                hf_logging.enable_progress_bar()

    def train_losses(self) -> list[float]:
        """The loss of every optimiser step so far, in order (metrics.jsonl survives resumes)."""
        from .report import train_losses

        return train_losses(self.out / METRICS_FILE)

    def log(self, record: dict) -> None:
        with (self.out / METRICS_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # -- the loop -------------------------------------------------------------------------

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.cfg.seed, 7, epoch]).permutation(len(self.examples))
        bs = self.cfg.batch_size
        return [order[i:i + bs].tolist() for i in range(0, len(order), bs)]

    @contextlib.contextmanager
    def reward_units(self):
        """The model with its head mapped from z-scores back to reward units (V = sd·z + mean),
        for saving and validating; the head is restored on exit (training goes on in z)."""
        head = self.model.head
        if (self.target_mean, self.target_sd) == (0.0, 1.0):
            yield self.model
            return
        saved = head.weight.detach().clone(), head.bias.detach().clone()
        with torch.no_grad():
            head.weight.mul_(self.target_sd)
            head.bias.mul_(self.target_sd).add_(self.target_mean)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                head.weight.copy_(saved[0])
                head.bias.copy_(saved[1])

    def validate(self) -> dict:
        if self.evaluate is None:
            return {}
        with self.reward_units() as model:
            metrics = self.evaluate(model)
        self.last_validation = metrics
        self.log({"kind": "validation", "step": self.progress.step,
                  "epoch": self.progress.epoch, **metrics})
        return metrics

    def train(self) -> dict:
        cfg, p = self.cfg, self.progress
        if p.step == 0 and p.epoch == 0 and p.batch == 0:
            self.validate()  # the untrained baseline: the mean predictor
        bar = tqdm(total=self.total_steps, initial=min(p.step, self.total_steps), desc="train",
                   unit="step", disable=cfg.quiet, dynamic_ncols=True)
        self.model.train()
        try:
            while p.epoch < self.epochs:
                batches = self.epoch_batches(p.epoch)
                while p.batch < len(batches):
                    group = batches[p.batch:p.batch + cfg.grad_accum]
                    stats = self.train_step(group)
                    p.batch += len(group)
                    p.step += 1
                    self.log({"kind": "train", "step": p.step, "epoch": p.epoch, **stats})
                    bar.update()
                    bar.set_postfix(loss=f"{stats['loss']:.4f}", epoch=p.epoch)
                    if cfg.save_every and p.step % cfg.save_every == 0:
                        self.save_checkpoint(self.out / CHECKPOINTS_DIR / f"step-{p.step:06d}")
                        self.save_state()
                p.epoch, p.batch = p.epoch + 1, 0
                metrics = self.validate()
                if metrics and not cfg.quiet:
                    bar.write(_describe(p.epoch, metrics))
                self.save_state()
        finally:
            bar.close()
        if self.judge is not None:
            self.metadata["verdict"] = self.judge(self.last_validation, self.train_losses())
        self.save_checkpoint(self.out)
        self.save_state()
        return self.last_validation

    def _forward(self, examples: list[Example]):
        """Values of a micro-batch, its TD batch, and the consistency term (None when off)."""
        device = self.model.device
        if not self.cfg.consistency:
            batch = collate(examples, self.pad_id).to(device)
            values, _ = self.model(batch.input_ids, attention_mask=batch.attention_mask)
            return values, batch, None
        tb = collate_tree(examples, self.pad_id, self.model.backbone_dtype).to(device)
        values, _ = self.model(tb.batch.input_ids, attention_mask=tb.mask,
                               position_ids=tb.positions)
        return values, tb.batch, consistency_loss(values, tb)

    def train_step(self, group: list[list[int]]) -> dict:
        """One optimiser step over the micro-batches in `group` (gradient accumulation)."""
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = value_sum = target_sum = cons_sum = 0.0
        n_tokens = n_resp = 0
        for idx in group:
            values, batch, cons = self._forward([self.examples[i] for i in idx])
            values = values + batch.potentials.to(values.dtype)  # V = phi + U (--residual)
            targets = lambda_returns(values.detach(), batch.rewards, batch.response_mask,
                                     self.cfg.gamma, self.cfg.lam)
            loss = td_loss(values, targets, batch.response_mask, batch.weights)
            if cons is not None:
                cons_sum += cons.item()
                loss = loss + self.cfg.consistency * cons
            (loss / len(group)).backward()
            m = batch.response_mask
            loss_sum += loss.item()
            value_sum += float((values.detach() * m).sum())
            target_sum += float((targets * m).sum())
            n_resp += int(m.sum())
            n_tokens += batch.n_tokens
        grad_norm = None
        if self.cfg.max_grad_norm:
            grad_norm = float(torch.nn.utils.clip_grad_norm_([q for _, q in self.params],
                                                             self.cfg.max_grad_norm))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        seconds = time.perf_counter() - t0
        n_resp = max(n_resp, 1)
        extra = {"consistency": cons_sum / len(group)} if self.cfg.consistency else {}
        return {"loss": loss_sum / len(group), **extra, "lr": lr, "grad_norm": grad_norm,
                "value_mean": value_sum / n_resp, "target_mean": target_sum / n_resp,
                "tokens": n_tokens, "seconds": seconds, "tokens_per_s": n_tokens / seconds}


def export_checkpoint(src: Path, dest: str | Path) -> Path:
    """Copy the value model at the top of run directory `src` (only the files its config
    names) to `dest`, replacing what a previous export left there."""
    import shutil

    from ..values.store import CONFIG_NAME, HEAD_NAME, read_checkpoint_config

    config = read_checkpoint_config(src)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_NAME, HEAD_NAME):
        shutil.copy2(Path(src) / name, dest / name)
    dirs = [(config.get("lora") or {}).get("adapter_dir"), config["backbone"].get("dir"),
            config.get("tokenizer") if config.get("tokenizer") != "smollm2" else None]
    for sub in filter(None, dirs):
        if (dest / sub).exists():
            shutil.rmtree(dest / sub)
        shutil.copytree(Path(src) / sub, dest / sub)
    return dest


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 62


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))


def _describe(epoch: int, m: dict) -> str:
    from .verdict import describe_quality

    return f"epoch {epoch}, held out: {describe_quality(m)}"
