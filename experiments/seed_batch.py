"""A multirun's seeds trained as one compiled program, each writing its own run directory.

    python -m experiments.train -m seed=0,1,2 launcher=seed_batch
    python -m experiments.train -m seed=0,1,2 algo=oracle algo.num_epochs=100 launcher=seed_batch

The `seed_batch` launcher (`hydra_plugins/seed_batch_launcher`) groups a multirun's jobs by
their overrides less `seed=`. A group of several seeds of an algorithm that can batch them
(`Algorithm.train_seeds`: PODS, the oracle and HDS) trains here, its epoch vmapped over the
seeds (`pods.train.train_seeds`; HDS's with each seed's own real data and model,
`sim2real.loop.run_loop_seeds`): one trace and one compile for the group instead of one per seed.
Each seed still gets the directory, config, metrics, checkpoints and summary that
`python -m experiments.train seed=S` writes (the same fingerprint, so either can resume the
other's), and a killed batch resumes each seed from its own checkpoint. Every other group
(one seed; sysid, LQR and Brax's agents, which train one seed at a time; `run.compare`) runs
its jobs one after another, as hydra's basic launcher does, with a line saying why.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

from omegaconf import DictConfig, OmegaConf

from experiments.compare import format_table
from experiments.schema import ConfigError
from experiments.train import (
    finish_run,
    prepare_run,
    refuse,
    save_hydra_config,
    start_run,
    sweep_objective,
)
from experiments.trainers import ALGORITHMS
from pods.runtime import filter_known_xla_logs


class BatchJob(NamedTuple):
    """One job of a multirun, as its launcher composed it."""

    cfg: DictConfig
    """The job's config, without its `hydra` node."""
    hydra_cfg: DictConfig
    """Its hydra config (what `.hydra/hydra.yaml` holds)."""
    output_dir: Path


def seed_batch_refusal(cfgs: list[DictConfig]) -> str | None:
    """Why the jobs `cfgs` cannot train as one program; None where they can."""
    if len(cfgs) < 2:
        return "one seed"
    name = cfgs[0].algo.get("name")
    algorithm = ALGORITHMS.get(name)
    if algorithm is None or algorithm.train_seeds is None:
        return f"algo={name} trains one seed at a time"
    if any(cfg.run.compare for cfg in cfgs):
        return "run.compare trains other algorithms beside each seed"

    def without_seed(cfg: DictConfig) -> dict:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        resolved.pop("seed")
        return resolved

    first = without_seed(cfgs[0])
    if any(without_seed(cfg) != first for cfg in cfgs[1:]):
        return "the jobs differ in more than their seed"
    seeds = [cfg.seed for cfg in cfgs]
    if len(set(seeds)) < len(seeds):
        return f"a seed repeats ({seeds})"
    return None


def run_seed_batch(jobs: list[BatchJob]) -> list[float]:
    """Trains `jobs` (seeds of one config, see `seed_batch_refusal`) as one program; each
    writes its run directory as `python -m experiments.train` would. Returns each job's sweep
    objective. A config that cannot run stops them all before any compute, with one line."""
    filter_known_xla_logs()
    start = time.perf_counter()
    try:
        runs = [prepare_run(job.cfg, job.output_dir) for job in jobs]
        for job in jobs:
            save_hydra_config(job.cfg, job.output_dir, job.hydra_cfg)
        for run in runs:
            start_run(run)
        trained = ALGORITHMS[jobs[0].cfg.algo.name].train_seeds(runs)
        summaries = [finish_run(run, result) for run, result in zip(runs, trained, strict=True)]
    except ConfigError as err:
        refuse(err, [job.output_dir for job in jobs])
    for summary in summaries:
        print(format_table([summary]))
    seeds = ", ".join(str(job.cfg.seed) for job in jobs)
    print(
        f"done in {time.perf_counter() - start:.0f} s: seeds {seeds} in one program, "
        f"into {', '.join(str(job.output_dir) for job in jobs)}"
    )
    return [sweep_objective(summary) for summary in summaries]


__all__ = ["BatchJob", "run_seed_batch", "seed_batch_refusal"]
