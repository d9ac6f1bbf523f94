"""Scores of evaluation figures, with no JAX and no project import, so that every layer can
use them: `sim2real.evaluation` scores a run's figures, `paper_figures` a sweep's.

    score       = (R - R_random) / (R_ceiling - R_random)         0 = random commands,
                                                                  1 = the ceiling
    gap closure = (R - R_sim_only) / (R_ceiling - R_sim_only)     0 = PODS trained in sim only,
                                                                  1 = the ceiling

R is a return or a solved share; the ceiling is the best policy known on the real system
(the oracle, or the classical controller where it does better). A gap closure divides by
the gap R_ceiling - R_sim_only, so it means something only where that gap stands clear of
its noise (`gap_stands_out`).
"""

from __future__ import annotations

import math


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN where the denominator is zero or either is not finite."""
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator == 0:
        return math.nan
    return numerator / denominator


def normalized_score(value: float, random: float, oracle: float) -> float:
    """(R - R_random) / (R_oracle - R_random): 0 for random commands, 1 for the oracle (or
    whatever run is the ceiling); NaN where undefined (oracle == random)."""
    return _ratio(value - random, oracle - random)


def gap_closure(value: float, sim_only: float, oracle: float) -> float:
    """(R - R_sim_only) / (R_oracle - R_sim_only): the share of the sim2real gap a method
    closes, relative to PODS trained in `sim` only (0) and the ceiling (1: the oracle, or
    whichever policy is best on the real)."""
    return _ratio(value - sim_only, oracle - sim_only)


def share_std(share: float, n: int) -> float:
    """The standard error of a share measured on n independent trials: sqrt(p (1 - p) / n)."""
    if not (math.isfinite(share) and n > 0):
        return math.nan
    return math.sqrt(max(share * (1.0 - share), 0.0) / n)


def difference_std(*stds: float) -> float:
    """The standard deviation of a sum or difference of independent figures."""
    return math.sqrt(sum(s * s for s in stds))


def gap_stands_out(gap: float, std: float) -> bool:
    """Whether a gap is larger than twice its standard deviation (and both are known)."""
    return math.isfinite(gap) and math.isfinite(std) and abs(gap) > 2.0 * std


__all__ = ["difference_std", "gap_closure", "gap_stands_out", "normalized_score", "share_std"]
