"""The value model a training run starts from: the backbone with a zero-initialised head, and
LoRA on all its layers or only the top ones (`--lora-layers`), seeded by the run's seed."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..values.model import LORA_TARGETS, ValueModel, build_value_model, tiny_value_model
from .config import TrainConfig

TINY = "tiny"


def build_model(cfg: TrainConfig):
    """A fresh value model (zero-initialised head) and its tokenizer, seeded by cfg.seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.backbone == TINY:
            top = bool(cfg.lora_layers and cfg.lora_r)
            model, tokenizer = tiny_value_model(cfg.seed, lora_r=0 if top else cfg.lora_r)
            nn.init.zeros_(model.head.weight)  # tiny_value_model randomises it for scoring tests
            nn.init.zeros_(model.head.bias)
            if top:
                model = add_top_lora(model, cfg.lora_r, cfg.lora_layers)
        elif cfg.lora_layers and cfg.lora_r:
            model, tokenizer = build_value_model(cfg.backbone, lora_r=0, dtype=cfg.dtype)
            model = add_top_lora(model, cfg.lora_r, cfg.lora_layers)
        else:
            model, tokenizer = build_value_model(cfg.backbone, lora_r=cfg.lora_r, dtype=cfg.dtype)
    return model.to(cfg.device).train(), tokenizer


def add_top_lora(model: ValueModel, r: int, layers: int) -> ValueModel:
    """Wrap the LORA_TARGETS projections of the top `layers` transformer layers in LoRA (rank
    r, alpha 2r, as `build_value_model` does for all layers) and freeze everything else but
    the head. The adapter config names the modules, so `load_value_model` restores it as is."""
    from peft import LoraConfig, get_peft_model

    base = model.backbone
    n = int(base.config.num_hidden_layers)
    names = [name for name, _ in base.named_modules()
             if name.rsplit(".", 1)[-1] in LORA_TARGETS and _layer_index(name) >= n - layers]
    if not names:
        raise ConfigError(f"--lora-layers {layers}: no LoRA target modules found in the backbone")
    config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=names,
                        bias="none")
    return ValueModel(get_peft_model(base, config), backbone_source=model.backbone_source)


def _layer_index(module_name: str) -> int:
    """The N of a "...layers.N.<...>" module name (-1 when there is none)."""
    parts = module_name.split(".")
    for a, b in zip(parts, parts[1:]):
        if a == "layers" and b.isdigit():
            return int(b)
    return -1
