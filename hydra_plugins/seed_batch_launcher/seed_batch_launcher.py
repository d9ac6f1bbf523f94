"""The `seed_batch` hydra launcher: a multirun's seeds of one config as one program.

Hydra finds launchers in the `hydra_plugins` namespace package; this one is selected with
`launcher=seed_batch` (experiments/conf/launcher/seed_batch.yaml). It composes every job as
hydra's basic launcher does, groups the jobs by their overrides less `seed=`, and hands each
group that can train as one program to `experiments.seed_batch.run_seed_batch`; the other
groups run job by job, exactly as the basic launcher runs them. Hydra imports every plugin
whenever it starts, so the experiments are imported only once a launch begins. (Hydra
executes plugin modules outside `sys.modules`, where a dataclass cannot read postponed
annotations: no `from __future__ import annotations` here.)
"""

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class SeedBatchLauncherConf:
    _target_: str = "hydra_plugins.seed_batch_launcher.seed_batch_launcher.SeedBatchLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="seed_batch", node=SeedBatchLauncherConf)


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


class SeedBatchLauncher(Launcher):
    def __init__(self) -> None:
        super().__init__()
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from experiments.seed_batch import seed_batch_refusal

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        groups: dict[tuple[str, ...], list[tuple[int, DictConfig]]] = {}
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            sweep_config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            rest = tuple(o for o in filter_overrides(overrides) if _key(o) != "seed")
            groups.setdefault(rest, []).append((idx, sweep_config))

        returns: dict[int, JobReturn] = {}
        for rest, group in groups.items():
            cfgs = [_task_config(sweep_config) for _, sweep_config in group]
            reason = seed_batch_refusal(cfgs)
            if reason is not None:
                log.info(f"[{' '.join(rest)}]: {len(group)} job(s) one after another ({reason})")
                for idx, sweep_config in group:
                    returns[idx] = self._run(sweep_config, self.task_function)
                continue
            log.info(f"[{' '.join(rest)}]: {len(group)} seeds in one program")
            returns.update(self._launch_batch(group))
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [returns[idx] for idx in sorted(returns)]

    def _launch_batch(self, group: list[tuple[int, DictConfig]]) -> dict[int, JobReturn]:
        from experiments.seed_batch import BatchJob, run_seed_batch

        jobs: list[BatchJob] = []

        def collect(task_cfg: DictConfig) -> None:
            hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
            jobs.append(BatchJob(task_cfg, hydra_cfg, Path(HydraConfig.get().runtime.output_dir)))

        # Hydra's own set-up of each job (its output directory, callbacks, logging), with the
        # training left to the batch.
        job_returns = [self._run(sweep_config, collect) for _, sweep_config in group]
        for job_return, objective in zip(job_returns, run_seed_batch(jobs), strict=True):
            job_return.return_value = objective
        return {idx: job_return for (idx, _), job_return in zip(group, job_returns, strict=True)}

    def _run(self, sweep_config: DictConfig, task_function) -> JobReturn:
        return run_job(
            hydra_context=self.hydra_context,
            task_function=task_function,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )


def _task_config(sweep_config: DictConfig) -> DictConfig:
    task_cfg = copy.deepcopy(sweep_config)
    with open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg
