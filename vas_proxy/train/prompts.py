"""Prompt sets for training: JSONL, one object per line with `prompt` or `messages`.

`prompt` is raw text sent upstream as is; `messages` is a chat (list of {role, content}) that
the chat template turns into the upstream prompt. Either way the value model later sees the
EXACT upstream prompt text, as the engine shows it at decode time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..templates import ChatTemplate


class PromptsError(ConfigError):
    """A prompts file that cannot be used: missing, bad JSON, or a line without a prompt."""

    code = "invalid_prompts"


@dataclass(frozen=True)
class PromptItem:
    """One training prompt. `text` is what rewards see: the raw prompt, or the last user
    message of a chat; `upstream` the exact text sent upstream."""

    index: int
    text: str
    upstream: str
    messages: tuple[dict, ...] | None = None


def read_prompts(path: str | Path) -> list[dict]:
    """Parse and check the JSONL file; returns one dict per non-blank line."""
    p = Path(path)
    if not p.is_file():
        raise PromptsError(f"prompts file {p} does not exist" if not p.exists()
                           else f"prompts file {p} is not a file")
    items = []
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptsError(f"cannot read prompts file {p}: {exc}") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptsError(f"{p} line {n}: bad JSON ({exc.msg})") from None
        items.append(_check(obj, p, n))
    if not items:
        raise PromptsError(f"prompts file {p} holds no prompts")
    return items


def _check(obj, path: Path, n: int) -> dict:
    where = f"{path} line {n}"
    if not isinstance(obj, dict) or ("prompt" not in obj and "messages" not in obj):
        raise PromptsError(f"{where}: expected an object with \"prompt\" (text) or "
                           "\"messages\" (chat)")
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"]:
            raise PromptsError(f"{where}: \"prompt\" must be a non-empty string")
        return {"prompt": obj["prompt"]}
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in msgs):
        raise PromptsError(f"{where}: \"messages\" must be a non-empty list of "
                           "{\"role\": str, \"content\": str}")
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]}


def render_prompts(items: list[dict], template: ChatTemplate | None) -> list[PromptItem]:
    """Apply the chat template to chats; raw prompts pass through unchanged."""
    out = []
    for i, item in enumerate(items):
        if "prompt" in item:
            out.append(PromptItem(i, item["prompt"], item["prompt"]))
            continue
        if template is None:
            raise PromptsError("the prompts file holds chats (\"messages\") but this upstream has "
                               "no chat template: pass --chat-template or use \"prompt\" lines")
        msgs = item["messages"]
        users = [m["content"] for m in msgs if m["role"] == "user"]
        out.append(PromptItem(i, users[-1] if users else msgs[-1]["content"],
                              template.render(msgs), tuple(msgs)))
    return out
