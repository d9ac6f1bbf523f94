"""The checks of a composed config that the trainers would otherwise fail on only once
training: `check_algo` finds them from the config alone, before any compute, and raises one
ConfigError line naming the keys and values. `typed_configs` converts the config into the
library's configs once (`RunConfigs`), which the checks read and the run keeps; where the
library has a check of its own, the command line calls it and translates its error.

Split from `experiments.trainers`, which holds the registry (`ALGORITHMS`, `NEEDS_TESTBED`,
`algo_config`) these checks read and the trainers themselves.
"""

from __future__ import annotations

import jax
from omegaconf import DictConfig

from dynamics_models import ModelConfig
from experiments.run_context import RunConfigs, run_devices
from experiments.schema import LOOP_EXTRAS, ConfigError, to_library_config
from experiments.trainers import ALGORITHMS, NEEDS_TESTBED, algo_config
from pods.config import PODSConfig, check_horizons
from pods.sharding import check_divisible
from sim2real.lab import physics_steps
from sim2real.loop_config import LoopConfig
from sim2real.sysid import SysIDConfig
from sim2real.testbed_spec import PHYSICS_STEP


def typed_configs(cfg: DictConfig) -> RunConfigs:
    """The library's configs of `cfg` (`cfg.algo.name` known), each validated by its own
    dataclass: a bad value raises one ConfigError line naming the key and the value. Every
    run converts them here, once."""
    return RunConfigs(
        algo=algo_config(cfg),
        model=to_library_config(ModelConfig, cfg.model, "model"),
        loop=to_library_config(LoopConfig, cfg.real, "real", skip=LOOP_EXTRAS),
        sysid=to_library_config(SysIDConfig, cfg.sysid, "sysid"),
    )


def check_algo(cfg: DictConfig, configs: RunConfigs) -> None:
    """What the trainer of `cfg.algo.name` would find wrong only once training, found from
    the config and its library configs (`typed_configs`) alone: one ConfigError line naming
    the keys and values."""
    name, env = cfg.algo.name, cfg.env
    config = configs.algo
    if env.system == "brax":
        if name in NEEDS_TESTBED:
            raise ConfigError(
                f"algo={name} {NEEDS_TESTBED[name]}: env=brax (env.name={env.name}) has none; "
                f"there, run one of {tuple(a for a in ALGORITHMS if a not in NEEDS_TESTBED)}"
            )
        if getattr(config, "randomization", None) is not None:
            raise ConfigError(
                "algo.randomization varies the testbed's physics: env=brax has none to vary"
            )
        if configs.float64:
            raise ConfigError("algo.float64=true: Brax's registry envs simulate in float32")
        if getattr(config, "order", 1) == 2 and env.get("reward") is None:
            raise ConfigError(
                f"algo.order=2 differentiates the reward in the observation, which "
                f"env.name={env.name}'s own reward is not: give one as "
                "env.reward=module:function, r(obs_next, action), or use algo.order=1"
            )
    if isinstance(config, PODSConfig):
        _check_devices(cfg, config)
        horizon = config.horizon or env.episode_length
        source = "algo.horizon" if config.horizon else "env.episode_length"
        pairs = config.num_trajectories * horizon
        if config.minibatch_size > pairs:
            raise ConfigError(
                f"algo.minibatch_size={config.minibatch_size} is more than the "
                f"{pairs} (state, action) pairs an epoch distills (algo.num_trajectories="
                f"{config.num_trajectories} x {source}={horizon}): lower it to <= {pairs}"
            )
        _check_horizons(config, env.episode_length)
    if name in ("hds", "pods_sysid", "hds_sysid"):
        _check_real_data(cfg, configs)
    if name == "lqr" and env.task != "balance":
        raise ConfigError(
            f"algo=lqr stabilizes the upright: it runs on balance tasks, not env.task={env.task}"
        )
    if name == "energy_lqr" and env.system == "double_cartpole" and env.task != "balance":
        raise ConfigError(
            "algo=energy_lqr swings up one pole; on env.system=double_cartpole it runs the "
            f"balance task (its LQR catch), not env.task={env.task}"
        )


def _check_horizons(config: PODSConfig, episode_length: int) -> None:
    """The library's own horizon checks (`pods.config.check_horizons`: visited starts, a
    growing horizon), on the horizon the run rolls out, with the keys they read."""
    try:
        check_horizons(config, config.horizon or episode_length, episode_length)
    except ValueError as err:
        raise ConfigError(
            f"algo: {err} (algo.horizon={config.horizon}, algo.horizon_start="
            f"{config.horizon_start}, env.episode_length={episode_length})"
        ) from None


def _check_devices(cfg: DictConfig, config: PODSConfig) -> None:
    """`run.devices` exists here, and splits the epoch's rollouts evenly."""
    requested, available = cfg.run.get("devices"), jax.local_device_count()
    if requested is not None and not 1 <= requested <= available:
        raise ConfigError(
            f"run.devices={requested}: this machine has {available} local device(s); give "
            f"1 to {available}, or null for all of them"
        )
    try:
        check_divisible(
            len(run_devices(cfg)),
            config.rollout_batches("algo."),
            fewer="fewer devices (run.devices)",
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_lab_family(cfg: DictConfig, sysid: SysIDConfig) -> None:
    """The lab family's identified simulator can be built on this env (before any data)."""
    if cfg.env.system not in PHYSICS_STEP:
        raise ConfigError(
            f"sysid.family=lab identifies a testbed's physics, not env.system={cfg.env.system}"
        )
    if sysid.lab_integrator == "rk4" and cfg.env.backend == "mjx":
        raise ConfigError(
            "sysid.family=lab with sysid.lab_integrator=rk4 runs on env.backend=chain or "
            "generalized, not mjx"
        )
    step, frames = PHYSICS_STEP[cfg.env.system]
    frames = frames if cfg.env.n_frames is None else cfg.env.n_frames
    if sysid.lab_timestep is not None:
        try:
            physics_steps(step * frames, sysid.lab_timestep)
        except ValueError as err:
            raise ConfigError(f"sysid.lab_timestep={sysid.lab_timestep}: {err}") from None


def _check_real_data(cfg: DictConfig, configs: RunConfigs) -> None:
    """HDS's, pods_sysid's and hds_sysid's use of `real.budget` for episodes of
    env.episode_length, and the identification's settings."""
    loop, horizon, name = configs.loop, cfg.env.episode_length, cfg.algo.name
    if name in ("pods_sysid", "hds_sysid"):
        sysid = configs.sysid
        if loop.budget < horizon:
            raise ConfigError(
                f"real.budget={loop.budget} holds no episode of env.episode_length={horizon} "
                "steps for sysid"
            )
        if sysid.window > horizon:
            raise ConfigError(
                f"sysid.window={sysid.window} is longer than an episode "
                f"(env.episode_length={horizon})"
            )
        if sysid.family == "lab":
            _check_lab_family(cfg, sysid)
        if name == "pods_sysid":
            return
        if configs.algo.group_sizes()[1] == 0:
            raise ConfigError(
                f"algo=hds_sysid with algo.beta={configs.algo.beta} records no real data to "
                "identify from: give algo.beta > 0, or use algo=pods_sysid"
            )
    try:
        loop.rounds(horizon)  # the budget holds the initial data
    except ValueError as err:
        raise ConfigError(f"real: {err}") from None
    model = configs.model
    if model.rollout_horizon > horizon:
        raise ConfigError(
            f"model.rollout_horizon={model.rollout_horizon} is longer than an episode "
            f"(env.episode_length={horizon})"
        )
    if loop.initial_data == "policy" and configs.algo.group_sizes()[1] > 0:
        raise ConfigError(
            "real.initial_data=policy collects with a warm-start policy, which the command "
            "line does not provide: use real.initial_data=random"
        )


__all__ = ["check_algo", "typed_configs"]
