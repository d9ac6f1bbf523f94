"""The paper's figures, from run directories and benchmark JSON.

    python -m paper_figures.make <figure|all> [--preset smoke|paper] [--runs DIR]

`sweeps` says what each figure needs (methods as hydra overrides, tasks, seeds, presets),
`make` runs what is missing as subprocesses (`experiments.train`, `benchmarks/*.py`) and
draws, `runs` reads run directories, `scores` normalizes returns, `stats` aggregates seeds
(mean, 95% bootstrap interval), `style` is the look, `figures` draws each figure with a CSV
of its numbers. Nothing here trains or imports JAX.
"""
