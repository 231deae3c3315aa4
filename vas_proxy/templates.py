"""Chat templates applied locally, so a chat request becomes a raw continuation prompt for
completions-only upstreams (docs/design.md §2: llama-cpp-python's server documents no chat
prefill).

Templates are Jinja (the Hugging Face convention), rendered in a sandbox. Sources: a GGUF file's
`tokenizer.chat_template` metadata, a transformers tokenizer directory, a template file, or the
built-in `chatml`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import ConfigError

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    template: str
    eos_token: str = ""
    bos_token: str = ""

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(msg):
            raise ConfigError(f"chat template rejected the messages: {msg}")

        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.template).render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                eos_token=self.eos_token, bos_token=self.bos_token)
        except ConfigError:
            raise
        except Exception as e:  # jinja errors: a template that does not fit the messages
            raise ConfigError(f"cannot apply chat template {self.source}: {e}") from None

    @property
    def stop_strings(self) -> list[str]:
        """End-of-turn markers to stop on when the upstream spells them as text."""
        marks = [m for m in ("<|im_end|>", "<|eot_id|>", "<|end|>") if m in self.template]
        if self.eos_token and self.eos_token not in marks:
            marks.append(self.eos_token)
        return marks


def _gguf_field(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    return bytes(f.parts[f.data[0]]).decode("utf-8")


@lru_cache(maxsize=8)
def from_gguf(path: str) -> ChatTemplate:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    tpl = _gguf_field(reader, "tokenizer.chat_template")
    if not tpl:
        raise ConfigError(f"{path} carries no chat template; pass --chat-template")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    eos = bos = ""
    if tokens is not None:
        def tok(key):
            f = reader.fields.get(key)
            if f is None:
                return ""
            idx = int(f.parts[f.data[0]][0])
            return bytes(tokens.parts[tokens.data[idx]]).decode("utf-8", "replace")
        eos, bos = tok("tokenizer.ggml.eos_token_id"), tok("tokenizer.ggml.bos_token_id")
    return ChatTemplate(f"gguf:{path}", tpl, eos_token=eos, bos_token=bos)


def from_props(props: dict) -> ChatTemplate | None:
    """The template an upstream publishes about itself (llama.cpp's server: GET /props
    `chat_template`, `bos_token`, `eos_token`); None when it publishes none."""
    tpl = props.get("chat_template") if isinstance(props, dict) else None
    if not isinstance(tpl, str) or not tpl:
        return None
    def text(key):
        v = props.get(key)
        return v if isinstance(v, str) else ""
    return ChatTemplate("upstream /props", tpl, eos_token=text("eos_token"),
                        bos_token=text("bos_token"))


def load_template(spec: str) -> ChatTemplate:
    """`chatml`, a path to a .gguf, a tokenizer directory (tokenizer_config.json), or a .jinja file."""
    if spec == "chatml":
        return ChatTemplate("chatml", CHATML, eos_token="<|im_end|>")
    p = Path(spec)
    if p.suffix == ".gguf" and p.is_file():
        return from_gguf(str(p))
    if p.is_dir() and (p / "tokenizer_config.json").is_file():
        cfg = json.loads((p / "tokenizer_config.json").read_text())
        tpl = cfg.get("chat_template")
        if not tpl:
            raise ConfigError(f"{p}/tokenizer_config.json has no chat_template")
        eos = cfg.get("eos_token") or ""
        eos = eos.get("content", "") if isinstance(eos, dict) else eos
        return ChatTemplate(str(p), tpl, eos_token=eos)
    if p.is_file():
        return ChatTemplate(str(p), p.read_text())
    raise ConfigError(f"unknown chat template {spec!r}: use chatml, a .gguf file, a tokenizer "
                      "directory or a Jinja template file")
