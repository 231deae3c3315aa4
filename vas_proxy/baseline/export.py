"""A tuned model on disk, self-describing and servable: the PEFT adapter (for transformers), the
same adapter as GGUF (for llama.cpp: `llama-server --lora`, which `--adapter` starts), its
curves, and `baseline.json`, which says how it was made and what it cost.

The GGUF conversion is llama.cpp's own `convert_lora_to_gguf.py`, from the same pinned source
as the embedded llama-server (scripts/build-llama-server.sh keeps it beside the binary): it
knows llama.cpp's tensor names and the rotary permutation of the query and key weights, which
a hand-written converter would have to copy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import env
from ..errors import ConfigError

ADAPTER_DIR = "adapter"
ADAPTER_GGUF = "adapter.gguf"
META_FILE = "baseline.json"
FORMAT = "vas_baseline"


def converter() -> str:
    script = env.llama_lora_converter()
    if script is None:
        raise ConfigError("llama.cpp's convert_lora_to_gguf.py is not found: run "
                          "scripts/build-llama-server.sh .venv/bin (make does), or set "
                          f"{env.LLAMA_CONVERT}")
    return script


def to_gguf(adapter_dir: Path, config, out_file: Path) -> Path:
    """Convert a saved PEFT adapter to a llama.cpp LoRA GGUF (float32, as trained)."""
    import copy

    from .policy import causal_lm_class

    config = copy.deepcopy(config)  # the converter reads the architecture from config.json
    config.architectures = [causal_lm_class(config).__name__]
    with tempfile.TemporaryDirectory() as base:
        config.save_pretrained(base)
        tmp = out_file.with_name(f".{out_file.name}.tmp")
        proc = subprocess.run([sys.executable, converter(), "--base", base, "--outtype", "f32",
                               "--outfile", str(tmp), str(adapter_dir)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not tmp.is_file():
            tmp.unlink(missing_ok=True)
            raise RuntimeError("convert_lora_to_gguf.py failed:\n" + proc.stderr[-2000:])
        tmp.replace(out_file)
    return out_file


def write_meta(out: Path, meta: dict) -> None:
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "format_version": 1, **meta}, indent=2) + "\n")
    tmp.replace(out / META_FILE)


def read_meta(path: str | Path) -> dict:
    """baseline.json of a tuned-model directory; a clear error for anything else."""
    folder = Path(path).expanduser()
    meta_path = folder / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{folder} is not a tuned model: no {META_FILE} (make one with "
                          "`vas-proxy baseline rl`)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {meta_path}: {exc}") from None
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{meta_path} is not a {FORMAT} file")
    if not (folder / ADAPTER_GGUF).is_file():
        raise ConfigError(f"{folder} has no {ADAPTER_GGUF}: the run did not finish; rerun it "
                          "with --resume")
    return meta


def plot_curves(out: Path, metrics: list[dict], title: str) -> Path | None:
    """The training curves people look at: loss, and the reward or preference margin."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    last: dict[int, dict] = {}
    for m in metrics:  # a resumed run logs some steps twice: keep the latest
        if "loss" in m:
            last[m["step"]] = m
    rows = [last[s] for s in sorted(last)]
    if not rows:
        return None
    keys = [k for k in ("loss", "rewards/margins", "reward", "kl", "rewards/accuracies")
            if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys):
        xs = [r["step"] for r in rows if key in r]
        ax.plot(xs, [r[key] for r in rows if key in r], lw=1)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
