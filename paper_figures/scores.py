"""Normalized scores, computed across the runs of a sweep.

    score = (R - R_random) / (R_ceiling - R_random)        0: random commands, 1: the ceiling

R is a run's mean evaluation return on a testbed, R_random that of uniform random commands
from the same held-out initial states (the run's own `eval/return_random_*`), and R_ceiling
the mean return of the ceiling run of the same task and seed (seeds share evaluation states,
`sim2real.evaluation.seed_streams`). In `real` the ceiling is the oracle, PODS trained on
`real`; in `sim`, its counterpart trained in sim (`sweeps.SIM_CEILING`). The formula is
`scoring.normalized_score`, the one `sim2real.evaluation` uses, in a module without JAX.

A single run knows no oracle and writes `eval/score_real: null`; a run that does know one
may carry it, and it stands in where the sweep has no oracle run for that task and seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from paper_figures.runs import Run, RunSpec
from paper_figures.sweeps import ORACLE, SIM_CEILING
from scoring import normalized_score

CEILINGS = {"real": ORACLE, "sim": SIM_CEILING}


def ceiling_run(found: Mapping[RunSpec, Run], testbed: str, task: str, seed: int) -> Run | None:
    """The ceiling run for `testbed` scores of a task (`RunSpec.task`) and seed, if the sweep
    has it."""
    ceiling = CEILINGS[testbed]
    for spec, run in found.items():
        if spec.method.facts == ceiling.facts and spec.task == task and spec.seed == seed:
            return run
    return None


def score(found: Mapping[RunSpec, Run], spec: RunSpec, testbed: str) -> float:
    """The normalized `testbed` score of the run found for `spec` (NaN where it has none)."""
    run = found[spec]
    ceiling = ceiling_run(found, testbed, spec.task, spec.seed)
    if ceiling is None:
        if testbed == "real":
            return run.number("eval/score_real")
        return math.nan
    return normalized_score(
        run.number(f"eval/return_{testbed}"),
        run.number(f"eval/return_random_{testbed}"),
        ceiling.number(f"eval/return_{testbed}"),
    )


def scored_without_oracle(found: Mapping[RunSpec, Run], task: str, seed: int) -> bool:
    """Whether every run found for a task and seed carries its own real score, so that the
    oracle run of that task and seed is not needed to score them."""
    runs = [run for spec, run in found.items() if spec.task == task and spec.seed == seed]
    return bool(runs) and all(run.summary.get("eval/score_real") is not None for run in runs)
