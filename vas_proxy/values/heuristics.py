"""Heuristic value functions usable as `py:` specs without a trained model.

`positivity` is the documented default value until a trained model ships: spec
`py:vas_proxy.values.heuristics:positivity`. It is cheap (a lexicon lookup, no network, no model
download) and it scores the same quantity as the `vader` reward the value models are trained on,
so swapping in the trained checkpoint later changes how well V predicts that reward, not what it
means.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _analyzer():
    """The VADER analyzer, built on first use: loading its lexicon takes ~0.1 s, not at import."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def positivity(prompt: str, continuations: list[str]) -> list[float]:
    """VADER compound sentiment (-1..1) of each continuation; the prompt is ignored.

    Only the response is scored, as the `vader` reward does: a positive prompt should not lift
    every candidate equally (it would cancel out after centring anyway).
    """
    analyzer = _analyzer()
    return [float(analyzer.polarity_scores(text)["compound"]) for text in continuations]
