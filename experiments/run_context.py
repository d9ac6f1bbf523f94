"""What every trainer gets (`RunContext`: the config and the library's configs converted from
it, the testbeds, its key and its run directory) and returns (`Trained`), and `EpochLoop`, the
resume, logging, progress bar and checkpoints around a library `train` call.

Split from `experiments.trainers`, so that the trainers module holds the trainers and their
registry.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
from omegaconf import DictConfig

from dynamics_models import ModelConfig
from experiments.real import RealSpec
from experiments.resume import Resume, resolved_config
from experiments.run_dir import RunDirectory
from experiments.schema import ConfigError
from pods.rollout import Policy
from pods.state import TrainingState
from sim2real.loop_config import LoopConfig
from sim2real.sysid import SysIDConfig

if TYPE_CHECKING:
    from brax.envs.base import Env


@dataclasses.dataclass(frozen=True)
class RunConfigs:
    """The library's configs of a run, converted from its hydra config once, when the config
    is checked (`experiments.checks.typed_configs`): what the checks and the trainers read,
    instead of converting `cfg` again."""

    algo: Any
    """The `Algorithm.config` of `cfg.algo.name` (`experiments.trainers.algo_config`)."""
    loop: LoopConfig
    """How the real data is spent (`cfg.real`, less the keys that choose the real system)."""
    model: ModelConfig
    """The dynamics model HDS fits to the real data (`cfg.model`)."""
    sysid: SysIDConfig
    """How pods_sysid identifies the physics (`cfg.sysid`)."""

    @property
    def float64(self) -> bool:
        """The run trains in double precision (`algo.float64`; algorithms without the field
        train in single)."""
        return bool(getattr(self.algo, "float64", False))


@dataclasses.dataclass
class RunContext:
    """What every trainer gets: the config, the testbeds, its key and its run directory."""

    cfg: DictConfig
    configs: RunConfigs
    """The library's configs of `cfg`, converted once: trainers read these, not `cfg`."""
    sim: Env
    """A testbed (`CartPole`) or, on `env=brax`, a Brax registry env (`BraxTask`)."""
    real: RealSpec | None
    """The real system: its differentiable twin, and what stands for the physical one; None
    on `env=brax`, which has no real variant."""
    key: jax.Array
    """The training stream of the seed (evaluation draws from another)."""
    run_dir: RunDirectory
    fingerprint: str
    """Hash of the config, stored with every checkpoint."""
    resume: Resume = dataclasses.field(default_factory=Resume)
    """What the run directory holds to continue from, checked against the config already."""

    @property
    def devices(self) -> list[jax.Device]:
        """The local devices the rollouts are sharded over (`run_devices`)."""
        return run_devices(self.cfg)


def run_devices(cfg: DictConfig) -> list[jax.Device]:
    """The first `run.devices` local devices (all of them where it is null)."""
    return jax.local_devices()[: cfg.run.get("devices")]


class Trained(NamedTuple):
    make_policy: Callable[[Any], Policy]
    params: Any
    summary: dict[str, Any]
    """Entries for summary.json beyond the common ones (`real/transitions`, ...)."""


def checkpoint_info(ctx: RunContext, wall_clock_s: float) -> dict:
    """What a checkpoint stores beside the state: the config (so a resumed run can say what
    differs) and the wall-clock spent."""
    return {
        "config": ctx.fingerprint,
        "resolved_config": resolved_config(ctx.cfg),
        "wall_clock_s": wall_clock_s,
    }


class EpochLoop:
    """Resume, logging, progress bar and checkpoints around a library `train` call."""

    def __init__(
        self,
        ctx: RunContext,
        template: TrainingState,
        num_epochs: int,
        *,
        position: int = 0,
        env_name: str | None = None,
    ):
        """`position`: the line of the progress bar, where several runs train together;
        `env_name`: the env it trains on, for the bar (by default the run's `sim`)."""
        self.ctx, self.num_epochs = ctx, num_epochs
        self.initial_state, self.elapsed = None, 0.0
        self.checked_gradient = False
        checkpoint = ctx.resume.checkpoint
        if checkpoint is not None:
            try:
                self.initial_state = ctx.run_dir.restore(checkpoint, template)
            except ValueError as err:
                raise ConfigError(str(err)) from None
            self.elapsed = checkpoint.info["wall_clock_s"]
            ctx.run_dir.truncate_metrics(checkpoint.info["epoch"] - 1)
            print(
                f"resuming {ctx.run_dir.path} after epoch {checkpoint.info['epoch']}",
                file=sys.stderr,
            )
        self.progress = None
        if ctx.cfg.run.progress_bar:
            from tqdm import tqdm

            done = 0 if self.initial_state is None else int(self.initial_state.epoch)
            desc = f"{ctx.cfg.algo.name} {env_name or ctx.sim.name}"
            if position:  # one bar per seed of a batch
                desc += f" seed {ctx.cfg.seed}"
            self.progress = tqdm(total=num_epochs, initial=done, desc=desc, position=position)

    def _wall_clock(self, metrics: dict) -> float:
        return self.elapsed + metrics["train/wall_clock_s"]

    def log(self, epoch: int, metrics: dict) -> None:
        metrics = {**metrics, "train/wall_clock_s": self._wall_clock(metrics)}
        self.ctx.run_dir.log_metrics(epoch, metrics)
        if not self.checked_gradient:
            self.checked_gradient = True
            if metrics.get("train/grad_norm") == 0.0:
                self._warn(zero_gradient_warning(self.ctx))
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(ret=f"{metrics['train/return']:.1f}")

    def _warn(self, message: str) -> None:
        if self.progress is not None:
            self.progress.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def checkpoint(self, state: TrainingState, metrics: dict) -> None:
        epoch = int(state.epoch)
        if epoch % self.ctx.cfg.run.checkpoint_every == 0 or epoch == self.num_epochs:
            info = checkpoint_info(self.ctx, self._wall_clock(metrics))
            self.ctx.run_dir.save_checkpoint(state, epoch, info)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


def zero_gradient_warning(ctx: RunContext) -> str:
    """The warning for a return whose gradient with respect to the actions is zero."""
    env = ctx.cfg.env
    message = (
        f"warning: {ctx.sim.name}: the return has no gradient with respect to the actions "
        "(train/grad_norm is 0 in the first epoch), so PODS cannot improve them"
    )
    if env.system != "brax":
        return message
    if env.get("reward") is not None:
        return f"{message}; env.reward={env.reward} is not differentiable in them either"
    return (
        f"{message}; give a differentiable reward r(obs_next, action) as "
        "env.reward=module:function (for inverted_pendulum: "
        "env.reward=sim2real.brax_envs:inverted_pendulum_upright)"
    )


__all__ = ["EpochLoop", "RunConfigs", "RunContext", "Trained", "checkpoint_info", "run_devices"]
