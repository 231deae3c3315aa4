"""Price models: what the billed calls of a response would cost under a provider's price rule.

"Billed tokens" counts a prompt token and an output token alike and ignores prompt caching,
but providers price output several times input and discount a prompt prefix they have cached.
Guided sampling re-sends prompt + response so far on every call and Best-of-N re-sends one
prompt N times, so the rule decides which method is cheaper. A `PriceModel` prices each
`usage.Call`; costs are in units of one uncached input token (prices are divided by `input`,
so a table may be written in dollars as the provider lists them).

Cached tokens of a call are what the upstream reported when it did; otherwise the table's
estimate from the call's shared prefix (the prompt tokens an earlier call of the same response
already sent): floored to `step`, and 0 when the prompt has fewer than `min_prompt` tokens.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from . import defaults
from .errors import ConfigError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # used in file and column names


@dataclass(frozen=True)
class PriceModel:
    """Prices per token, relative to each other (any unit: costs are divided by `input`)."""

    name: str
    input: float = 1.0
    output: float = 1.0
    cached_input: float = 1.0  # a prompt token served from the provider's prompt cache
    min_prompt: int = 0  # the cache applies only to prompts of at least this many tokens
    step: int = 1  # cached tokens are counted in multiples of this
    note: str = ""

    @property
    def caches(self) -> bool:
        """Whether cached prompt tokens cost anything different (else the split is moot)."""
        return self.cached_input != self.input


BUILTIN: dict[str, PriceModel] = {p.name: p for p in (
    PriceModel("flat", note="every billed token counts 1, prompt and output alike, no cache: "
                            "the billed tokens"),
    PriceModel("out4", output=4.0, note="output 4× input, no prompt cache"),
    PriceModel("out4-prefix", output=4.0, cached_input=0.25, step=64,
               note="output 4×; a prefix an earlier call sent costs 0.25×, in 64-token blocks "
                    "(DeepSeek's context cache; self-hosted prefix caching is close)"),
    PriceModel("openai", output=4.0, cached_input=0.5, min_prompt=1024, step=128,
               note="output 4×; cached input 0.5×, only for prompts of 1024 tokens or more, "
                    "in 128-token steps (OpenAI's prompt caching)"),
)}


def cached_tokens(call: Sequence, price: PriceModel) -> tuple[int, bool]:
    """(cached prompt tokens of one call under `price`, whether that number is an estimate)."""
    prompt, _, reported, shared = call
    if reported is not None:
        return max(0, min(int(reported), prompt)), False
    if not price.caches:
        return 0, False
    if prompt < price.min_prompt:
        return 0, True
    step = max(1, price.step)
    return min(shared, prompt) // step * step, True


def call_cost(call: Sequence, price: PriceModel) -> float:
    """One call `(prompt_tokens, completion_tokens, reported_cached_or_None, shared_prefix)`,
    in units of one uncached input token."""
    prompt, completion = call[0], call[1]
    cached, _ = cached_tokens(call, price)
    return (price.input * (prompt - cached) + price.cached_input * cached
            + price.output * completion) / price.input


def cost(calls: Iterable[Sequence], price: PriceModel) -> tuple[float, bool]:
    """(total cost of `calls`, whether any call's cached tokens had to be estimated)."""
    total, estimated = 0.0, False
    for call in calls:
        total += call_cost(call, price)
        estimated = estimated or cached_tokens(call, price)[1]
    return total, estimated


def record_calls(record: dict) -> list[tuple]:
    """The billed calls of an eval record; a record written before calls were kept counts as
    one call with its token totals, nothing reported and nothing shared."""
    if record.get("calls") is not None:
        return [tuple(c) for c in record["calls"]]
    return [(int(record.get("upstream_prompt_tokens") or 0),
             int(record.get("upstream_completion_tokens") or 0), None, 0)]


def parse_prices(spec: str | Sequence[str] | None) -> list[PriceModel]:
    """Price models from names and FILE.json paths ("flat,out4,own.json", or a list of them);
    None gives `defaults.EVAL_PRICES`."""
    if spec is None:
        spec = defaults.EVAL_PRICES
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[PriceModel] = []
    for item in (str(x).strip() for x in items):
        if not item or item.lower() == "none":
            continue
        if item in BUILTIN:
            model = BUILTIN[item]
        elif item.lower().endswith(".json"):
            model = load_price_file(item)
        else:
            raise ConfigError(f"unknown price model {item!r}: use one of "
                              f"{', '.join(BUILTIN)} or a FILE.json of your own prices")
        if any(m.name == model.name for m in out):
            raise ConfigError(f"price model {model.name!r} is named twice; give each FILE.json "
                              f"its own \"name\"")
        out.append(model)
    return out


def load_price_file(path: str | Path) -> PriceModel:
    """One table from a JSON object of `PriceModel` fields; `name` defaults to the file stem."""
    path = Path(path).expanduser()
    where = f"price file {path}"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist; give a FILE.json path or one of "
                          f"{', '.join(BUILTIN)}") from None
    except OSError as e:
        raise ConfigError(f"{where} cannot be read: {e.strerror or e}") from None
    except ValueError as e:
        raise ConfigError(f"{where} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold one JSON object of prices, e.g. "
                          '{"input": 1, "output": 4, "cached_input": 0.25, "step": 64}')
    known = [f.name for f in fields(PriceModel)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; known: "
                          f"{', '.join(known)}")
    data = {"name": path.stem, **data}
    for key in ("name", "note"):
        if not isinstance(data.get(key, ""), str):
            raise ConfigError(f"{where}: {key} must be a string")
    if not _NAME.fullmatch(data["name"]):
        raise ConfigError(f"{where}: name {data['name']!r} must be letters, digits, '.', '_', "
                          "'+' or '-' (it names columns and plot files)")
    for key in ("input", "output", "cached_input"):
        v = data.get(key, 1.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v < 0 or (key == "input" and v == 0):
            rule = "> 0 (costs are counted in uncached input tokens)" if key == "input" \
                else "≥ 0"
            raise ConfigError(f"{where}: {key} must be a number {rule}, not {v!r}")
        data[key] = float(v)
    for key, low in (("min_prompt", 0), ("step", 1)):
        v = data.get(key, low)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"{where}: {key} must be a whole number ≥ {low}, not {v!r}")
    return PriceModel(**data)
