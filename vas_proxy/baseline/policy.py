"""The policy an RL baseline tunes: the embedded SmolLM2 as a causal LM, with a LoRA adapter.

The weights come from the same dequantized GGUF the value models use (`values.gguf_cache`), so
the policy starts exactly where the served base model is (up to llama.cpp's quantized
arithmetic). SmolLM2 ties its output layer to the token embeddings, so the backbone is all the
causal LM needs. The adapter targets the attention and MLP projections of the top
`layers` blocks (0: all), never the tied LM head, which llama.cpp's adapter format cannot hold.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def base_gguf() -> Path:
    from ..assets import smollm2_gguf

    return smollm2_gguf()


def causal_lm_class(config) -> type:
    """The LM-head model class of a config (LlamaConfig → LlamaForCausalLM)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM._model_mapping[type(config)]


def load_policy(gguf: Path | None = None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The GGUF's model with its LM head (tied to the embeddings), in eval mode."""
    from ..values.gguf_cache import load_backbone

    backbone = load_backbone(Path(gguf or base_gguf()), dtype)
    config = backbone.config
    if not getattr(config, "tie_word_embeddings", False):
        raise ValueError("the policy needs a model whose LM head is tied to its embeddings "
                         f"(SmolLM2 is); {config.model_type} has its own")
    state = {f"model.{k}": v for k, v in backbone.state_dict().items()}
    model = causal_lm_class(config).from_pretrained(None, config=config, state_dict=state,
                                                    dtype=dtype)
    model.tie_weights()
    model.generation_config.pad_token_id = config.eos_token_id
    return model.eval()


def load_tokenizer(gguf: Path | None = None):
    from ..values.gguf_cache import load_tokenizer as _load

    tok = _load(Path(gguf or base_gguf()))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def lora_config(model: nn.Module, r: int, layers: int, alpha: float | None = None):
    """PEFT LoRA on the projections of the top `layers` blocks (0: all of them)."""
    from peft import LoraConfig

    n = model.config.num_hidden_layers
    first = 0 if layers <= 0 else max(0, n - layers)
    targets = [f"layers.{i}.{kind}.{proj}" for i in range(first, n)
               for kind, projs in (("self_attn", PROJECTIONS[:4]), ("mlp", PROJECTIONS[4:]))
               for proj in projs]
    return LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=0.0, bias="none",
                      target_modules=targets, task_type="CAUSAL_LM")


def load_tuned(adapter_dir: str | Path, gguf: Path | None = None) -> nn.Module:
    """The policy with a saved PEFT adapter (`disable_adapter()` gives the base back)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_policy(gguf), str(adapter_dir)).eval()
