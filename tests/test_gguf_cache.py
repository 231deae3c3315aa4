"""The on-disk cache of the dequantized SmolLM2 backbone and its tokenizer (values/gguf_cache).

One real dequantization of the bundled GGUF per run (the `cold` fixture); the cache's copy must
give back exactly those weights and exactly the same scores. The failure paths (corrupt entries,
a writer killed mid-write, an unwritable cache) run on a tiny stand-in model, so they test the
cache's logic without dequantizing again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vas_proxy import env
from vas_proxy.assets import DATA_DIR, smollm2_gguf
from vas_proxy.values import gguf_cache
from vas_proxy.values.scorer import CheckpointValue

from vas_cache import cache_root_env, shared_root

GGUF = smollm2_gguf()
POSITIVITY = DATA_DIR / "values" / "positivity"
PROMPT = "<|im_start|>user\nTell me about your day.<|im_end|>\n<|im_start|>assistant\n"
CANDIDATES = [" Great", " great", "!", "", "\n", " 😊", "'s", "ly", " the", " awful"]
STATES = ["", " It", " It was", " It was wonder", " It was", " It is a long day, and"]
TEXTS = ["", "hello", PROMPT + " Cats 🐱", "caf\u00e9 e\u0301 \ufffd \xa0", "<|endoftext|>x",
         "     ", "\n\n", "<|im_start|>assistant\n<|im_end|>"]


def _backbones(root: Path) -> Path:
    return root / gguf_cache.SUBDIR


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    """(cache root, the model a load into an empty cache returns, the entry it wrote).

    The session's shared root when it is still empty (then test_kv's real model reads it warm),
    else a fresh one."""
    root = shared_root(tmp_path_factory)
    if list(_backbones(root).glob("*.safetensors")):
        root = tmp_path_factory.mktemp("vas-cache-cold")
    with cache_root_env(root):
        entry = gguf_cache._entry(GGUF, "safetensors")
        assert not entry.exists()
        model = gguf_cache.load_backbone(GGUF, torch.float32)
    assert entry.is_file()
    return root, model, entry


@pytest.fixture
def tiny_dequantize(monkeypatch):
    """Replace the 20-30 s dequantization with a tiny random Llama; counts the calls."""
    from transformers import LlamaConfig, LlamaModel

    calls = []
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaModel(config).eval()

    def fake(gguf):
        calls.append(gguf)
        return copy.deepcopy(model)

    monkeypatch.setattr(gguf_cache, "dequantize", fake)
    return model, calls


def _no_dequantize(monkeypatch):
    def fail(gguf):
        raise AssertionError("dequantized although the cache holds the backbone")
    monkeypatch.setattr(gguf_cache, "dequantize", fail)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- the real backbone

def test_cached_backbone_is_bit_identical_to_the_dequantized_one(cold, monkeypatch):
    root, ref, _ = cold
    monkeypatch.setenv(env.CACHE_DIR, str(root))
    _no_dequantize(monkeypatch)
    warm = gguf_cache.load_backbone(GGUF, torch.float32)
    assert type(warm) is type(ref) and warm is not ref
    assert _same_weights(warm, ref)
    assert sum(p.numel() for p in warm.parameters()) > 100_000_000  # SmolLM2-135M, not a stub
    buffers = dict(ref.named_buffers())
    assert all(torch.equal(buffers[name], b) for name, b in warm.named_buffers())
    assert warm.config.to_dict() == ref.config.to_dict()
    for attr in ("name_or_path", "is_quantized", "quantization_method", "hf_quantizer",
                 "training"):
        assert getattr(warm, attr, "absent") == getattr(ref, attr, "absent"), attr


def test_cached_backbone_in_bfloat16_is_the_cast_weights(cold, monkeypatch):
    root, ref, _ = cold
    monkeypatch.setenv(env.CACHE_DIR, str(root))
    _no_dequantize(monkeypatch)
    warm = gguf_cache.load_backbone(GGUF, torch.bfloat16)
    ref_state = ref.state_dict()
    assert all(v.dtype == torch.bfloat16 and torch.equal(v, ref_state[k].to(torch.bfloat16))
               for k, v in warm.state_dict().items())


def test_cached_backbone_gives_identical_scores(cold, monkeypatch):
    """The bundled positivity model (LoRA merged into the backbone) scores exactly alike on
    the dequantized and on the cached backbone."""
    root, ref, _ = cold
    monkeypatch.setenv(env.CACHE_DIR, str(root))
    with monkeypatch.context() as mp:  # the old way: dequantize, cache nothing
        mp.setattr(gguf_cache, "_read_backbone", lambda *a: None)
        mp.setattr(gguf_cache, "_write_backbone", lambda *a: None)
        mp.setattr(gguf_cache, "dequantize", lambda gguf: copy.deepcopy(ref))
        dequantized = CheckpointValue.load(POSITIVITY)
    _no_dequantize(monkeypatch)
    cached = CheckpointValue.load(POSITIVITY)
    spread = 0.0
    for state in STATES:
        want = dequantized.score(PROMPT, state, CANDIDATES)
        assert cached.score(PROMPT, state, CANDIDATES) == want, state
        spread = max(spread, max(want) - min(want))
    assert spread > 1e-3  # not a comparison between constants


def test_truncated_real_entry_falls_back_and_is_rewritten(cold, monkeypatch, tmp_path, caplog):
    _, ref, entry = cold
    monkeypatch.setenv(env.CACHE_DIR, str(tmp_path / "c"))
    mine = gguf_cache._entry(GGUF, "safetensors")
    with entry.open("rb") as f:
        mine.write_bytes(f.read(1 << 20))  # header and the first MiB of data
    calls = []
    monkeypatch.setattr(gguf_cache, "dequantize",
                        lambda gguf: calls.append(gguf) or copy.deepcopy(ref))
    model = gguf_cache.load_backbone(GGUF, torch.float32)
    assert calls == [GGUF] and _same_weights(model, ref)
    assert "ignoring unreadable cached backbone" in caplog.text
    assert mine.stat().st_size == entry.stat().st_size  # rewritten whole
    _no_dequantize(monkeypatch)
    assert _same_weights(gguf_cache.load_backbone(GGUF, torch.float32), ref)


def test_cache_modes_and_no_temporary_files(cold):
    root, _, entry = cold
    assert stat.S_IMODE(_backbones(root).stat().st_mode) == 0o700
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE((_backbones(root) / gguf_cache.HASHES).stat().st_mode) == 0o600
    assert not list(_backbones(root).glob(".*"))


# --------------------------------------------------------------------------- failure paths

def _corrupt_variants(path: Path, good: bytes) -> dict:
    from safetensors.torch import save

    return {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "garbage": os.urandom(4096),
        "missing tensor": save({"norm.weight": torch.ones(16)}, metadata=_meta(path)),
        "unknown format": save({"x": torch.ones(1)}, metadata={**_meta(path), "format": "99"}),
    }


def _meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def _same_entry(path: Path, good: bytes) -> bool:
    """Same tensors and metadata (the header's key order may differ between writes)."""
    from safetensors.torch import load

    got, want = load(path.read_bytes()), load(good)
    scratch = path.with_name("good.safetensors")
    scratch.write_bytes(good)
    same_meta = _meta(path) == _meta(scratch)
    scratch.unlink()
    return same_meta and got.keys() == want.keys() and all(
        torch.equal(got[k], want[k]) for k in got)


def test_corrupt_entries_are_ignored_and_replaced(tiny_dequantize, monkeypatch, tmp_path,
                                                  caplog):
    ref, calls = tiny_dequantize
    monkeypatch.setenv(env.CACHE_DIR, str(tmp_path / "c"))
    first = gguf_cache.load_backbone(GGUF, torch.float32)
    entry = gguf_cache._entry(GGUF, "safetensors")
    good = entry.read_bytes()
    assert len(calls) == 1 and _same_weights(first, ref)
    for name, bad in _corrupt_variants(entry, good).items():
        entry.write_bytes(bad)
        caplog.clear()
        model = gguf_cache.load_backbone(GGUF, torch.float32)
        assert _same_weights(model, ref), name
        assert "ignoring unreadable cached backbone" in caplog.text, name
        assert _same_entry(entry, good), name  # replaced by a good entry
    n = len(calls)
    assert n == 1 + 5
    assert _same_weights(gguf_cache.load_backbone(GGUF, torch.float32), ref)
    assert len(calls) == n  # the rewritten entry is read, not rebuilt


KILL_MID_WRITE = """
import os, signal, sys
import safetensors.torch
from vas_proxy.values import gguf_cache

def dying_save(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
        f.write(b"partial")
        f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

safetensors.torch.save_file = dying_save
from transformers import LlamaConfig, LlamaModel
config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1)
gguf_cache.dequantize = lambda gguf: LlamaModel(config)
gguf_cache.load_backbone(gguf_cache.Path(sys.argv[1]), gguf_cache.torch.float32)
"""


def test_writer_killed_mid_write_leaves_no_entry(tiny_dequantize, monkeypatch, tmp_path):
    ref, calls = tiny_dequantize
    monkeypatch.setenv(env.CACHE_DIR, str(tmp_path / "c"))
    res = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, str(GGUF)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == -9, res.stderr
    entry = gguf_cache._entry(GGUF, "safetensors")
    leftovers = list(entry.parent.glob(f".{entry.name}.*.tmp"))
    assert not entry.exists() and len(leftovers) == 1  # the dead writer's temp file only
    old = time.time() - 2 * gguf_cache.STALE_TEMP_S
    os.utime(leftovers[0], (old, old))
    assert _same_weights(gguf_cache.load_backbone(GGUF, torch.float32), ref)
    assert len(calls) == 1 and entry.is_file()
    assert not leftovers[0].exists()  # a stale temp file is swept on the next write


def test_failed_write_still_loads_and_cleans_up(tiny_dequantize, monkeypatch, tmp_path, caplog):
    import safetensors.torch

    ref, _ = tiny_dequantize
    monkeypatch.setenv(env.CACHE_DIR, str(tmp_path / "c"))

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    assert _same_weights(gguf_cache.load_backbone(GGUF, torch.float32), ref)
    assert "cannot cache the dequantized backbone" in caplog.text
    backbones = tmp_path / "c" / gguf_cache.SUBDIR
    assert [p.name for p in backbones.iterdir()] == [gguf_cache.HASHES]


def test_unwritable_cache_root_still_loads(tiny_dequantize, monkeypatch, tmp_path, caplog):
    ref, _ = tiny_dequantize
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv(env.CACHE_DIR, str(blocker))
    assert _same_weights(gguf_cache.load_backbone(GGUF, torch.float32), ref)
    assert "cannot cache" in caplog.text and blocker.read_text() == ""


def test_entries_of_other_library_versions_are_removed(tiny_dequantize, monkeypatch, tmp_path):
    monkeypatch.setenv(env.CACHE_DIR, str(tmp_path / "c"))
    sha = gguf_cache.gguf_sha256(GGUF)
    backbones = tmp_path / "c" / gguf_cache.SUBDIR
    stale_versions = "transformers-0.0.1_gguf-0.0.1_tokenizers-0.0.1"
    old = backbones / f"{sha}.{stale_versions}.safetensors"
    other_gguf = backbones / f"{'0' * 64}.{stale_versions}.safetensors"
    old.write_bytes(b"x")
    other_gguf.write_bytes(b"x")
    gguf_cache.load_backbone(GGUF, torch.float32)
    assert not old.exists() and other_gguf.exists()
    assert gguf_cache._entry(GGUF, "safetensors").is_file()


# --------------------------------------------------------------------------- the hash memo

def test_gguf_hash_is_memoised_by_path_size_and_mtime(monkeypatch, tmp_path):
    monkeypatch.setenv(env.CACHE_DIR, str(tmp_path / "c"))
    blob = tmp_path / "model.gguf"
    blob.write_bytes(b"one")
    one = hashlib.sha256(b"one").hexdigest()
    assert gguf_cache.gguf_sha256(blob) == one
    memo = tmp_path / "c" / gguf_cache.SUBDIR / gguf_cache.HASHES
    assert stat.S_IMODE(memo.stat().st_mode) == 0o600
    with monkeypatch.context() as mp:  # a hit does not hash the file again
        mp.setattr(gguf_cache.hashlib, "sha256", None)
        assert gguf_cache.gguf_sha256(blob) == one
    blob.write_bytes(b"two!")  # new size and mtime: hashed again
    assert gguf_cache.gguf_sha256(blob) == hashlib.sha256(b"two!").hexdigest()
    memo.write_text("{not json")  # a corrupt memo is recomputed, not an error
    assert gguf_cache.gguf_sha256(blob) == hashlib.sha256(b"two!").hexdigest()
    assert json.loads(memo.read_text())[str(blob.resolve())]["size"] == 4


# --------------------------------------------------------------------------- the tokenizer

def test_cached_tokenizer_matches_the_gguf_one(monkeypatch, tmp_path, caplog):
    import transformers
    from transformers import AutoTokenizer

    monkeypatch.setenv(env.CACHE_DIR, str(tmp_path / "c"))
    calls = []
    real = AutoTokenizer.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        calls.append("gguf" if kwargs.get("gguf_file") else "cache")
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(spy))
    converted = gguf_cache.load_tokenizer(GGUF)
    cached = gguf_cache.load_tokenizer(GGUF)
    assert calls == ["gguf", "cache"]
    for text in TEXTS:
        assert cached(text, add_special_tokens=True)["input_ids"] == \
            converted(text, add_special_tokens=True)["input_ids"], text
    assert (cached.bos_token_id, cached.eos_token_id, cached.pad_token_id, len(cached)) == \
        (converted.bos_token_id, converted.eos_token_id, converted.pad_token_id, len(converted))
    assert cached.get_vocab() == converted.get_vocab()
    assert cached.chat_template == converted.chat_template
    assert cached.name_or_path == converted.name_or_path
    # A checkpoint's tokenizer/ (random-init backbones save SmolLM2's) comes out the same:
    # byte for byte on transformers 5; 4.x writes the special tokens of a tokenizer read from
    # files in their long form (and names the fast class), the same tokens.
    converted.save_pretrained(str(tmp_path / "a"))
    cached.save_pretrained(str(tmp_path / "b"))
    names = sorted(f.name for f in (tmp_path / "a").iterdir())
    assert names == sorted(f.name for f in (tmp_path / "b").iterdir())
    differ = {n for n in names
              if (tmp_path / "a" / n).read_bytes() != (tmp_path / "b" / n).read_bytes()}
    cosmetic = {"special_tokens_map.json", "tokenizer_config.json"}
    assert differ <= (set() if int(transformers.__version__.split(".")[0]) >= 5 else cosmetic)
    reread = [AutoTokenizer.from_pretrained(str(tmp_path / d)) for d in "ab"]
    assert reread[0].special_tokens_map == reread[1].special_tokens_map
    assert reread[0](PROMPT)["input_ids"] == reread[1](PROMPT)["input_ids"]

    entry = gguf_cache._entry(GGUF, "tokenizer")
    assert stat.S_IMODE(entry.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in entry.iterdir())
    (entry / "tokenizer.json").write_text('{"truncated": ')
    calls.clear()
    again = gguf_cache.load_tokenizer(GGUF)
    assert calls == ["cache", "gguf"]  # the failed read, then converted again
    assert "ignoring unreadable cached tokenizer" in caplog.text
    assert again(PROMPT)["input_ids"] == converted(PROMPT)["input_ids"]
    assert gguf_cache.load_tokenizer(GGUF)(PROMPT)["input_ids"] == converted(PROMPT)["input_ids"]
    assert calls[-1] == "cache"  # the rewritten entry reads again


def test_cold_load_in_another_dtype_caches_float32(tiny_dequantize, monkeypatch, tmp_path):
    from safetensors.torch import load_file

    ref, calls = tiny_dequantize
    monkeypatch.setenv(env.CACHE_DIR, str(tmp_path / "c"))
    model = gguf_cache.load_backbone(GGUF, torch.bfloat16)
    want = ref.state_dict()
    assert all(v.dtype == torch.bfloat16 and torch.equal(v, want[k].to(torch.bfloat16))
               for k, v in model.state_dict().items())
    stored = load_file(str(gguf_cache._entry(GGUF, "safetensors")))
    assert stored.keys() == want.keys()
    assert all(v.dtype == torch.float32 and torch.equal(v, want[k]) for k, v in stored.items())
    assert len(calls) == 1
