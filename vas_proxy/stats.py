"""Summary statistics shared by the evaluation report, calibration, the one-step study and the
benchmarks' paired comparisons: one definition of a mean and its standard error, and one
seeded bootstrap, so a "±" means the same thing everywhere."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def mean_se(xs: Iterable[float | None]) -> tuple[float, float]:
    """Mean and standard error (sample sd / √n) of the values that are not None: the mean is
    nan with no values, the error nan below 2 (one value says nothing of its spread)."""
    a = np.asarray([x for x in xs if x is not None], dtype=np.float64)
    if a.size == 0:
        return math.nan, math.nan
    se = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else math.nan
    return float(a.mean()), se


def bootstrap_indices(n: int, draws: int = 4000, seed: int = 0) -> list[np.ndarray]:
    """`draws` resamples (with replacement) of n paired items, seeded: a statistic's s.e. is
    its sd over them, every compared row resampled alike."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, n) for _ in range(draws)]
