"""Aggregating seeds: a mean (or median) with a 95% bootstrap confidence interval.

Every number a figure draws comes with an interval from the same percentile bootstrap, with a
fixed seed, so redrawing a figure from the same runs gives the same picture to the last pixel.
A handful of seeds is what a sweep affords, and the bootstrap makes no normality assumption.
Its interval collapses to the point when all seeds agree, and also when there is only one
seed, where it says nothing about the spread: every table carries `n`, so a reader sees it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

LEVEL = 0.95
RESAMPLES = 10_000
SEED = 0

Statistic = Callable[..., np.ndarray]
"""A numpy reduction taking `axis=` (np.mean, np.median)."""


class Estimate(NamedTuple):
    """A statistic over samples and its bootstrap confidence interval."""

    value: float
    low: float
    high: float
    n: int


def bootstrap(
    samples: Sequence[float] | np.ndarray,
    *,
    statistic: Statistic = np.mean,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Estimate:
    """`statistic` of `samples` with its percentile-bootstrap `level` confidence interval."""
    values = np.asarray(samples, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"need a non-empty 1-d sequence of samples, got shape {values.shape}")
    (estimate,) = bootstrap_columns(
        values[:, None], statistic=statistic, level=level, resamples=resamples, seed=seed
    )
    return estimate


def bootstrap_columns(
    samples: np.ndarray,
    *,
    statistic: Statistic = np.mean,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> list[Estimate]:
    """`bootstrap` of every column of a [samples, points] array (a curve over seeds).

    The same resampled sample indices serve every column, so a band over a curve is the band
    of whole resampled seeds, not of points resampled independently. A column holding a
    non-finite sample (a diverged seed) gives NaN: a gap in the plot, `nan` in the table.
    """
    samples = np.asarray(samples, dtype=float)
    if samples.ndim != 2 or samples.size == 0:
        raise ValueError(f"need a non-empty [samples, points] array, got shape {samples.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    n = samples.shape[0]
    index = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    tail = 100 * (1 - level) / 2
    # Statistics of deviations from the first sample, shifted back: a constant column gives
    # exactly that constant (a plain mean of [0.1] * 3 is 0.10000000000000002), and large
    # offsets lose no precision to the summation.
    origin = samples[0]
    deviations = samples - origin
    value = statistic(deviations, axis=0)
    estimates = []
    for j in range(samples.shape[1]):
        if not np.all(np.isfinite(samples[:, j])):
            estimates.append(Estimate(np.nan, np.nan, np.nan, n))
            continue
        replicates = statistic(deviations[index, j], axis=1)
        low, high = np.percentile(replicates, [tail, 100 - tail])
        estimates.append(
            Estimate(
                float(origin[j] + value[j]), float(origin[j] + low), float(origin[j] + high), n
            )
        )
    return estimates


def on_common_grid(
    curves: Sequence[tuple[np.ndarray, np.ndarray]], points: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Resamples (x, y) curves with different x (the wall-clock of each seed) onto one grid.

    The grid runs from the latest first x, where every curve has begun, to the latest last
    x. In between a curve is interpolated linearly, and after its last point it holds its
    last value: a seed that finished training early keeps the policy it ended with, which
    is what a reader of "return at time t" wants. Returns (grid, [curves, points] array).
    """
    if not curves:
        raise ValueError("need at least one curve")
    start = max(float(np.min(x)) for x, _ in curves)
    stop = max(float(np.max(x)) for x, _ in curves)
    grid = np.linspace(start, stop, points) if stop > start else np.array([start])
    stacked = []
    for x, y in curves:
        order = np.argsort(x, kind="stable")
        # np.interp holds the end values outside the curve's x range.
        stacked.append(np.interp(grid, np.asarray(x, float)[order], np.asarray(y, float)[order]))
    return grid, np.stack(stacked)
