"""Which runs a sweep can draw without its oracle run.

The figures draw solved shares, which need no ceiling. A run still records its normalized
real score where it knew the real's reference (`eval/score_real`, `experiments.compare`), and
`paper_figures.make` reads that to decide whether a sweep's oracle run (the normalizer of
`sim_vs_real` and `sample_efficiency`) must be run for a task and seed: where every run of
them carries its own score, it need not.
"""

from __future__ import annotations

from collections.abc import Mapping

from paper_figures.runs import Run, RunSpec


def scored_without_oracle(found: Mapping[RunSpec, Run], task: str, seed: int) -> bool:
    """Whether every run found for a task and seed carries its own real score, so that the
    oracle run of that task and seed is not needed to score them."""
    runs = [run for spec, run in found.items() if spec.task == task and spec.seed == seed]
    return bool(runs) and all(run.summary.get("eval/score_real") is not None for run in runs)
