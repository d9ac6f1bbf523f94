"""Scores of evaluation returns, with no JAX and no project import, so that every layer can
use them: `sim2real.evaluation` scores a run's returns, `paper_figures` a sweep's.

    score       = (R - R_random) / (R_ceiling - R_random)         0 = random commands,
                                                                  1 = the ceiling (the oracle)
    gap closure = (R - R_sim_only) / (R_oracle - R_sim_only)      0 = PODS trained in sim only,
                                                                  1 = the oracle
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
    closes, relative to PODS trained in `sim` only (0) and the oracle (1)."""
    return _ratio(value - sim_only, oracle - sim_only)


__all__ = ["gap_closure", "normalized_score"]
