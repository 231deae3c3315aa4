"""`vas-proxy demo`: the main job on the embedded default, side by side for a few prompts:
base sampling, VAS-guided and Best-of-N, with every reward and the upstream cost of each.

Uses what is bundled: each value model under `vas_proxy/data/values/` with the reward its
checkpoint says it was trained on (positivity ↔ vader, plain ↔ plain), or the documented
positivity heuristic when no model is bundled. Guidance follows the first objective (or
`--weights`); Best-of-N picks by that objective's reward. No response cache: the costs shown
are what the upstream billed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from dataclasses import dataclass

from . import defaults
from .assets import DATA_DIR
from .errors import ConfigError
from .options import add_options, from_args, option

PROMPTS = ["Tell me about your weekend plans.",
           "What do you think about Mondays?",
           "How was the traffic on your way to work?",
           "Describe the food at the new cafe downtown.",
           "What is your opinion of rainy days?"]
# Rewards of the bundled objectives when a checkpoint does not name its own.
KNOWN_REWARDS = {"positivity": "vader", "plain": "plain", "concise": "concise"}

TOP_K = defaults.TOP_K  # candidates per step; Best-of-N samples the same top-k base


@dataclass
class Objective:
    name: str
    value: str  # value SPEC
    reward: str  # reward SPEC


def bundled_objectives() -> list[Objective]:
    """The bundled value models (positivity first) with their rewards; else the heuristic."""
    import json

    from .options import HEURISTIC_VALUE

    found = []
    root = DATA_DIR / "values"
    for d in sorted(root.glob("*/vas_value.json")) if root.is_dir() else []:
        name = d.parent.name
        try:
            reward = json.loads(d.read_text()).get("metadata", {}).get("reward")
        except (OSError, ValueError):
            continue
        reward = reward or KNOWN_REWARDS.get(name)
        if reward:
            found.append(Objective(name, f"bundled:{name}", reward))
    found.sort(key=lambda o: (o.name != "positivity", o.name))
    return found or [Objective("positivity", HEURISTIC_VALUE, "vader")]


@dataclass
class DemoOptions:
    """`vas-proxy demo`'s flags (an option group: vas_proxy/options)."""

    prompt: list[str] | None = option(None, "a prompt (repeatable; default: built-in ones)",
                                      metavar="TEXT")
    prompts: int = option(defaults.DEMO_PROMPTS, "how many built-in prompts", metavar="N")
    max_tokens: int = option(defaults.DEMO_MAX_TOKENS, "tokens per response")
    beta: float = option(defaults.DEMO_BETA, "guidance strength in reward sd units; the default "
                                             "is where the bundled models start to move the "
                                             "reward clearly (README Results)")
    weights: str | None = option(None, "weights of the bundled value models (default: the "
                                       "first at 1)", metavar="NAME=W,...")
    best_of: int = option(defaults.DEMO_BEST_OF, "N of the baseline")
    speculate: int = option(defaults.DEMO_SPECULATE, "draft tokens per upstream call (-1: "
                                                     "adaptive, exact)")
    seed: int = option(defaults.SEED, "prompt i uses seed + i")
    value: str | None = option(None, "use this value model instead of the bundled ones (with "
                                     "--reward)", metavar="NAME=SPEC")
    reward: str | None = option(None, "the reward of --value (default vader)", metavar="SPEC")
    width: int | None = option(None, "output width (default: the terminal's)")


def register(sub) -> None:
    p = sub.add_parser("demo", help="base vs VAS vs Best-of-N side by side on the embedded "
                                    "default", description=__doc__.split("\n\n")[0])
    add_options(p, DemoOptions)
    p.set_defaults(func=_main)


async def _main(a: argparse.Namespace) -> int:
    o = from_args(DemoOptions, a)
    prompts = o.prompt or PROMPTS[:max(1, o.prompts)]
    if o.value:
        name, sep, spec = o.value.partition("=")
        if not sep or not name or not spec:
            raise ConfigError(f"--value expects NAME=SPEC, got {o.value!r}")
        objectives = [Objective(name, spec, o.reward or "vader")]
    else:
        objectives = bundled_objectives()
    await run_demo(prompts, objectives, max_tokens=o.max_tokens, beta=o.beta,
                   weights=o.weights, best_of=o.best_of, speculate=o.speculate, seed=o.seed,
                   width=o.width)
    return 0


async def run_demo(prompts: list[str], objectives: list[Objective], *,
                   max_tokens: int = defaults.DEMO_MAX_TOKENS, beta: float = defaults.DEMO_BETA,
                   weights: str | None = None, best_of: int = defaults.DEMO_BEST_OF,
                   speculate: int = defaults.DEMO_SPECULATE, seed: int = defaults.SEED,
                   width: int | None = None, file=None) -> list[list["Cell"]]:
    """Generate and print the comparison; returns the cells (one row of 3 per prompt)."""
    from .bestofn import check_best_of
    from .eval.config import Setting, canonical_weights, parse_weights
    from .eval.harness import generate
    from .options import CacheOptions, GuidanceOptions
    from .runtime import Options, load_rewards, open_runtime
    from .train.prompts import PromptItem

    file = file or sys.stdout
    check_best_of(best_of)
    w = parse_weights(weights) if weights else {objectives[0].name: 1.0}
    unknown = set(w) - {o.name for o in objectives}
    if unknown:
        raise ConfigError(f"--weights names {', '.join(sorted(unknown))}; the value models "
                          f"here are {', '.join(o.name for o in objectives)}")
    w = {k: v for k, v in w.items() if v != 0}
    # Every objective's reward is shown, under the reward's name.
    rewards = load_rewards({o.reward: o.reward for o in objectives})
    # Only the value models that guide are loaded.
    opts = Options(guidance=GuidanceOptions(values={o.name: o.value for o in objectives
                                                    if w.get(o.name)},
                                            beta=beta, top_k=TOP_K, speculate=speculate),
                   cache=CacheOptions(use_cache=False))
    guided_label = "VAS β={:g} ({})".format(beta, ", ".join(
        f"{k}" if v == 1 else f"{k}×{v:g}" for k, v in w.items()))
    selector = objectives[0]
    headers = ["base (β=0)", guided_label, f"Best-of-{best_of} ({selector.reward})"]
    # The very settings `vas-proxy eval` runs, through its `generate`.
    settings = [Setting("base"), Setting("vas", beta=beta, weights=canonical_weights(w)),
                Setting("bon", best_of=best_of, bon_reward=selector.reward)]
    rows = []
    async with open_runtime(opts) as rt:
        rt.engine.resolve({"beta": beta, "weights": w})  # bad weights fail before any call
        stop = rt.template.stop_strings if rt.template else []
        for i, prompt in enumerate(prompts):
            print(f"[{i + 1}/{len(prompts)}] {prompt}", file=sys.stderr, flush=True)
            item = PromptItem(i, prompt, rt.render_prompt(prompt))
            cells = [Cell.of(await generate(rt, s, item, seed + i, rewards, stop,
                                            max_tokens=max_tokens, top_k=TOP_K))
                     for s in settings]
            rows.append(cells)
            print_row(prompt, headers, cells, width, file)
    return rows


@dataclass
class Cell:
    text: str
    upstream_calls: int
    billed_tokens: int
    seconds: float
    scores: dict
    kl: str = ""  # what the answer paid: "KL 1.2 nats" (guided), "KL ≤ 0.64 nats" (Best-of-N)

    @classmethod
    def of(cls, record: dict) -> "Cell":
        """From a `vas-proxy eval` record (its lower-noise `kl_path` where it has one)."""
        kl = record.get("kl_path", record.get("kl"))  # a sum of KLs or a bound: ≥ 0
        paid = ("" if kl is None else  # (max: a base answer's 0 may be summed as -1e-17)
                f", KL {'≤ ' if record.get('kl_kind') == 'bound' else ''}{max(kl, 0.0):.2f} nats")
        return cls(record["response"], record["upstream_calls"], record["billed_tokens"],
                   record["seconds"], record["rewards"], paid)

    def footer(self) -> list[str]:
        return ["  ".join(f"{k} {v:+.2f}" for k, v in self.scores.items()),
                f"{self.upstream_calls} calls, {self.billed_tokens} billed tok",
                f"{self.seconds:.1f} s{self.kl}"]


def print_row(prompt: str, headers: list[str], cells: list[Cell], width: int | None,
              file) -> None:
    width = width or shutil.get_terminal_size((120, 24)).columns
    col = (width - 3 * (len(cells) - 1)) // len(cells)
    print(f"\n== {prompt}", file=file)
    if col < 24:  # too narrow for columns: one after the other
        for h, c in zip(headers, cells):
            print(f"-- {h}", file=file)
            print(textwrap.fill(c.text.strip() or "(empty)", width), file=file)
            print("   " + " | ".join(c.footer()), file=file)
        return
    blocks = []
    for h, c in zip(headers, cells):
        lines = [h[:col], "-" * min(col, len(h))]
        lines += textwrap.wrap(c.text.strip() or "(empty)", col) or [""]
        lines += [""] + [x[:col] for x in c.footer()]
        blocks.append(lines)
    text_len = max(len(b) - 4 for b in blocks)  # align the footers
    for b in blocks:
        b[-4:-4] = [""] * (text_len - (len(b) - 4))
    for parts in zip(*blocks):
        print(" | ".join(p.ljust(col) for p in parts).rstrip(), file=file)
