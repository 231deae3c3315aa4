"""Run TRL's trainers on the policy: DPO on preference pairs, GRPO online on the reward.

TRL is the field's standard library for both; this module only feeds it our data and reward
and records what it logs. Each step's metrics go to `metrics.jsonl` (the curves), checkpoints
to `checkpoints/` every `save_every` steps, and a run that finds a checkpoint resumes from it
(TRL restores the adapter, optimiser, scheduler and data order).
"""

from __future__ import annotations

import json
from pathlib import Path

from .data import tokenize_pair

METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"


def _callbacks(out: Path):
    from transformers import TrainerCallback

    class Record(TrainerCallback):
        """Append every log TRL makes (loss, rewards, margins, KL) to metrics.jsonl."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                with (out / METRICS_FILE).open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return [Record()]


def _common(cfg, out: Path) -> dict:
    """TrainingArguments both trainers share: CPU, float32, no external loggers."""
    return dict(output_dir=str(out / CHECKPOINTS), learning_rate=cfg.lr, seed=cfg.seed,
                logging_steps=1, save_steps=cfg.save_every, save_total_limit=1,
                report_to=[], disable_tqdm=cfg.quiet, use_cpu=cfg.device == "cpu",
                lr_scheduler_type="constant_with_warmup", warmup_steps=cfg.warmup,
                max_grad_norm=1.0, remove_unused_columns=False, dataloader_num_workers=0,
                # TRL turns it on by default; a 135M model on a CPU has the memory, not the time
                gradient_checkpointing=False)


def _quiet(trainer, cfg):
    """--quiet: no progress bar (disable_tqdm) and no log lines printed in its place."""
    if cfg.quiet:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def last_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = out / CHECKPOINTS
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def fit_dpo(cfg, model, tokenizer, pairs: list[dict], out: Path, peft_config):
    """DPO (sigmoid loss, the paper's) with the adapter disabled as the reference model."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    class PairsDPOTrainer(DPOTrainer):
        """Takes our own tokenization (data.tokenize_pair) instead of TRL's text pipeline, which
        would append an end-of-turn token to every response, cut ones included."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    rows = [tokenize_pair(tokenizer, p) for p in pairs]
    dataset = Dataset.from_list(rows)
    args = DPOConfig(**_common(cfg, out), beta=cfg.beta, num_train_epochs=cfg.epochs,
                     per_device_train_batch_size=cfg.batch_size, max_length=None,
                     gradient_accumulation_steps=1, precompute_ref_log_probs=True)
    trainer = PairsDPOTrainer(model=model, args=args, train_dataset=dataset,
                              processing_class=tokenizer, peft_config=peft_config,
                              callbacks=_callbacks(out))
    _quiet(trainer, cfg).train(resume_from_checkpoint=last_checkpoint(out))
    return trainer


def fit_grpo(cfg, model, tokenizer, prompts: list[dict], reward_fn, out: Path, peft_config):
    """GRPO: `num_generations` samples of each prompt, advantages within the group, a KL
    penalty of `beta` to the base (the adapter disabled)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    dataset = Dataset.from_list(prompts)
    per_step = cfg.prompts_per_step * cfg.generations
    args = GRPOConfig(**_common(cfg, out), beta=cfg.beta, max_steps=cfg.steps,
                      per_device_train_batch_size=per_step, num_generations=cfg.generations,
                      max_completion_length=cfg.max_tokens, temperature=1.0, top_k=0,
                      top_p=1.0, scale_rewards="group", loss_type="dapo",
                      gradient_accumulation_steps=1, shuffle_dataset=True)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward_fn], args=args,
                          train_dataset=dataset, processing_class=tokenizer,
                          peft_config=peft_config, callbacks=_callbacks(out))
    _quiet(trainer, cfg).train(resume_from_checkpoint=last_checkpoint(out))
    return trainer
