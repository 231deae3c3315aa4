"""The dequantized GGUF backbone and its tokenizer, cached on disk between starts.

Dequantizing the bundled SmolLM2 Q4_1 GGUF takes 20-30 s on a 2-core machine and converting its
tokenizer 3-5 s, and every start used to pay both (docs/design.md §4). The first start writes
the float32 weights as safetensors (never pickle: a cache file is read back by later processes)
and the tokenizer as `save_pretrained` files under `env.cache_root()/backbones/`; later starts
read them back in about a second.

An entry is named by the GGUF's sha256 (memoised in `gguf-sha256.json`, keyed by path, size
and mtime, so a start does not rehash 100 MB) and by the versions of the libraries that
dequantized it: another transformers or gguf may dequantize differently, so it gets its own
entry and the other version's entries of the same GGUF are removed. Entries are written to a
temporary name and `os.replace`d, so a crash never leaves a partial entry under a real name; the
directory is 0700 and its files 0600. An entry that cannot be read (truncated, corrupt, other
tensors than the model expects) is logged, ignored and rewritten; a cache that cannot be
written only costs the next start the dequantization again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..env import cache_root

SUBDIR = "backbones"
HASHES = "gguf-sha256.json"
FORMAT = "1"
STALE_TEMP_S = 3600  # a temporary file this old belongs to a writer that died
# Attributes transformers sets on a GGUF-loaded model that a model built from a state dict
# lacks; restored so both loads behave alike (peft checks `is_quantized`, for one).
LOAD_ATTRS = ("is_quantized", "quantization_method")

log = logging.getLogger("vas_proxy.values")


def cache_dir() -> Path:
    return cache_root() / SUBDIR


def load_backbone(gguf: Path, dtype: torch.dtype) -> nn.Module:
    """The base model of `gguf` (no LM head) in `dtype`: from the cache, else dequantized (in
    float32, the cache's dtype, then cast) and cached."""
    path = _entry(gguf, "safetensors")
    model = _read_backbone(path, gguf, dtype)
    if model is not None:
        return model
    model = dequantize(gguf)
    try:
        _write_backbone(path, model)
    except OSError as exc:
        log.warning("cannot cache the dequantized backbone in %s (%s)", path.parent, exc)
    if dtype != torch.float32:
        state = {k: v.detach() for k, v in model.state_dict().items()}
        model = _assemble(_describe(model), state, gguf, dtype)
    return model


def load_tokenizer(gguf: Path):
    """The tokenizer of `gguf`: from the cache, else converted from the GGUF and cached."""
    from transformers import AutoTokenizer

    path = _entry(gguf, "tokenizer")
    if path.is_dir():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            tokenizer.name_or_path = str(gguf.parent)  # as the GGUF load names it
            return tokenizer
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is rebuilt
            log.warning("ignoring unreadable cached tokenizer %s (%s: %s); rebuilding it",
                        path, type(exc).__name__, exc)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    try:
        _publish_dir(path, tokenizer.save_pretrained)
    except OSError as exc:
        log.warning("cannot cache the tokenizer in %s (%s)", path.parent, exc)
    return tokenizer


def dequantize(gguf: Path) -> nn.Module:
    """The GGUF's base model dequantized to float32 by transformers (needs gguf + accelerate)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # GGUF-loaded configs carry a quantization_config though the weights are now plain
    # floats; dropping it keeps `save_pretrained` (full fine-tunes) working.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    return model


def gguf_sha256(gguf: Path) -> str:
    """sha256 of the file's content, memoised by (path, size, mtime) in the cache directory."""
    gguf = Path(gguf).resolve()
    stat = gguf.stat()
    memo_path = cache_dir() / HASHES
    key = str(gguf)
    memo = _read_json(memo_path)
    hit = memo.get(key)
    if isinstance(hit, dict) and hit.get("size") == stat.st_size \
            and hit.get("mtime_ns") == stat.st_mtime_ns and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    digest = hashlib.sha256()
    with gguf.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    sha = digest.hexdigest()
    memo[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
    try:
        _ensure_dir()
        _write_file(memo_path, lambda tmp: tmp.write_text(json.dumps(memo, indent=1) + "\n"))
    except OSError as exc:
        log.warning("cannot record the GGUF's hash in %s (%s)", memo_path, exc)
    return sha


def _versions() -> str:
    """The libraries whose code produces an entry's content."""
    return "_".join(f"{name}-{importlib.metadata.version(name)}"
                    for name in ("transformers", "gguf", "tokenizers"))


def _entry(gguf: Path, kind: str) -> Path:
    return cache_dir() / f"{gguf_sha256(gguf)}.{_versions()}.{kind}"


# --------------------------------------------------------------------------- backbone entries

def _describe(model: nn.Module) -> dict[str, str]:
    """The safetensors metadata that rebuilds `model` around its tensors."""
    attrs = {name: getattr(vars(model)[name], "value", vars(model)[name])
             for name in LOAD_ATTRS if name in vars(model)}
    return {"format": FORMAT, "class": type(model).__name__,
            "config": model.config.to_json_string(), "attrs": json.dumps(attrs)}


def _assemble(meta: dict[str, str], state: dict[str, torch.Tensor], gguf: Path,
              dtype: torch.dtype) -> nn.Module:
    """The model `meta` describes with exactly the weights in `state` (no random init)."""
    import transformers

    if meta.get("format") != FORMAT:
        raise ValueError(f"cache format {meta.get('format')!r}, expected {FORMAT!r}")
    cls = getattr(transformers, meta["class"])
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise TypeError(f"{meta['class']!r} is not a transformers model class")
    config = transformers.AutoConfig.for_model(**json.loads(meta["config"]))
    model, info = cls.from_pretrained(None, config=config, state_dict=state, dtype=dtype,
                                      output_loading_info=True)
    wrong = {k: v for k, v in info.items() if v}  # missing, unexpected, mismatched keys
    if wrong:
        raise ValueError(f"tensors do not match the model: {wrong}")
    model.name_or_path = model.config.name_or_path = str(gguf.parent)
    model.hf_quantizer = None
    attrs = json.loads(meta.get("attrs") or "{}")
    if "is_quantized" in attrs:
        model.is_quantized = bool(attrs["is_quantized"])
    if "quantization_method" in attrs:
        from transformers.utils.quantization_config import QuantizationMethod

        model.quantization_method = QuantizationMethod(attrs["quantization_method"])
    return model


def _read_backbone(path: Path, gguf: Path, dtype: torch.dtype) -> nn.Module | None:
    if not path.is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        # Memory-mapped copy-on-write, as transformers loads any safetensors checkpoint: 0.1 s
        # where reading the 0.5 GB into memory took 1-2 s. Safe against our own writers, which
        # only ever replace or unlink an entry, never truncate it in place.
        state = load_file(str(path))
        return _assemble(meta, state, gguf, dtype)
    except Exception as exc:  # noqa: BLE001 - any unreadable entry is rebuilt
        log.warning("ignoring unreadable cached backbone %s (%s: %s); rebuilding it",
                    path, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None


def _write_backbone(path: Path, model: nn.Module) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    _ensure_dir()
    _write_file(path, lambda tmp: save_file(state, str(tmp), metadata=_describe(model)))
    _remove_other_versions(path)


def _remove_other_versions(path: Path) -> None:
    sha, kind = path.name.split(".", 1)[0], path.name.rsplit(".", 1)[-1]
    for other in path.parent.glob(f"{sha}.*.{kind}"):
        if other != path:
            _remove(other)


# --------------------------------------------------------------------------- atomic writes

def _ensure_dir() -> Path:
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    for stale in root.glob(".*.tmp"):
        try:
            if time.time() - stale.stat().st_mtime > STALE_TEMP_S:
                _remove(stale)
        except OSError:
            pass
    return root


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def _write_file(path: Path, write) -> None:
    """`write(tmp)`, then fsync, chmod 0600 and rename to `path` (atomic on POSIX)."""
    tmp = _temp_name(path)
    try:
        write(tmp)
        os.chmod(tmp, 0o600)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _publish_dir(path: Path, write) -> None:
    """`write(tmp_dir)`, then chmod (0700 / 0600 files) and rename the directory to `path`."""
    _ensure_dir()
    tmp = _temp_name(path)
    tmp.mkdir(mode=0o700)
    try:
        write(str(tmp))
        for child in tmp.rglob("*"):
            os.chmod(child, 0o700 if child.is_dir() else 0o600)
        try:
            os.replace(tmp, path)
        except OSError:  # `path` exists: a broken entry, or another process just wrote it
            _remove(path)
            os.replace(tmp, path)
        _remove_other_versions(path)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    """Delete a file or a directory tree; a directory is first renamed aside, so no reader
    ever sees it half-deleted under its real name."""
    if path.is_dir() and not path.is_symlink():
        aside = _temp_name(path)
        try:
            os.replace(path, aside)
        except OSError:
            return
        shutil.rmtree(aside, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
