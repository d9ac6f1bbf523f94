"""One trainer per `algo.name`: it turns the composed config into the library's config,
trains (continuing from the run directory's checkpoint, if any) and returns the policy and
its entries for `summary.json`.

    pods     PODS trained in `sim`
    oracle   PODS trained directly on the differentiable `real` testbed: the ceiling
    hds      HDS with a model fitted to real transitions (`sim2real.loop`)
    apg      Brax's analytic policy gradient, in `sim`
    ppo      Brax's PPO, in `sim`
    ppo_dr   Brax's PPO with domain randomization of the physics (`algo.randomization`)
    pods_sysid  PODS in the simulator whose physics `sim2real.sysid` identified from real
             transitions (random commands, the same `real.budget` HDS gets)
    lqr      LQR about the upright, from `sim`'s linearization (balance tasks)
    energy_lqr  the classical swing-up: energy pumping, then the LQR catch, all from `sim`

Brax's agents cannot resume mid-training: an APG/PPO run started again trains from the start
(its final params are checkpointed for reuse, not for resuming).

On `env=brax` (Brax's registry envs, sim only) `pods`, `apg` and `ppo` run; the others need
the `real` testbed or the testbeds' physics (NEEDS_TESTBED), and are refused before any
compute.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
from omegaconf import DictConfig

from baselines.brax_agents import APGConfig, PPOConfig, train_apg, train_ppo
from baselines.energy_lqr import EnergyLQRConfig
from baselines.energy_lqr import train as train_energy_lqr_policy
from baselines.lqr import LQRConfig
from baselines.lqr import train as train_lqr_gain
from dynamics_models import ModelConfig, save_model
from experiments.real import RealSpec
from experiments.resume import Resume, resolved_config
from experiments.run_dir import RunDirectory, atomic_write_json
from experiments.schema import LOOP_EXTRAS, ConfigError, to_library_config
from pods.config import HDSConfig, PODSConfig
from pods.hds import make_hds
from pods.programs import ProgramStore
from pods.rollout import Policy
from pods.sharding import check_divisible
from pods.state import TrainingState, init_training_state
from pods.train import make_pods, train_seeds
from pods.train import train as train_pods
from sim2real.lab import LabEffects, physics_steps
from sim2real.loop import LoopCheckpoint, LoopConfig, run_loop, run_loop_seeds
from sim2real.sysid import SysIDConfig, identify
from sim2real.sysid_lab import LAB_RECORD_FIELDS, identified_simulator, identify_lab
from sim2real.testbed_spec import PHYSICS_STEP, Physics

if TYPE_CHECKING:
    from brax.envs.base import Env


@dataclasses.dataclass
class RunContext:
    """What every trainer gets: the config, the testbeds, its key and its run directory."""

    cfg: DictConfig
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


def _pods(ctx: RunContext, env: Env, env_name: str | None = None) -> Trained:
    """PODS on `env`, which the progress bar and `train/env` name (`env_name`, by default
    its own name)."""
    config: PODSConfig = algo_config(ctx.cfg)
    env_name = env_name or env.name
    network = make_pods(config, env, devices=ctx.devices).network
    template = init_training_state(config, env, network, ctx.key)
    loop = EpochLoop(ctx, template, config.num_epochs, env_name=env_name)
    make_policy, params, _ = train_pods(
        config,
        env,
        ctx.key,
        progress_fn=loop.log,
        initial_state=loop.initial_state,
        checkpoint_fn=loop.checkpoint,
        devices=ctx.devices,
        programs=program_store(ctx, env),
    )
    loop.close()
    return Trained(make_policy, params, _pods_summary(config, env_name))


def program_store(ctx: RunContext, env: Env) -> ProgramStore | None:
    """Where the run keeps its compiled epoch for the next process (`pods.programs`): the
    `programs/` folder of the compilation cache, its context the config (its seed aside: the
    seed is an argument of the program, not part of it) and `env`'s name and physics (which
    system identification sets at run time). None with `run.store_programs=false`, and for
    rollouts sharded over several devices: a stored program runs on one."""
    cache = jax.config.jax_compilation_cache_dir
    if not ctx.cfg.run.store_programs or not cache or len(ctx.devices) != 1:
        return None
    resolved = resolved_config(ctx.cfg)
    resolved.pop("seed", None)
    physics = getattr(env, "physics", None)
    context = f"{json.dumps(resolved, sort_keys=True)}\nenv={env.name} physics={physics!r}"
    lab = getattr(env, "lab", None)
    if lab is not None:
        # The lab family of sysid sets the effects at run time, as it sets the physics.
        context += f" lab={lab!r}"
    return ProgramStore(Path(cache) / "programs", context)


def _pods_seeds(ctxs: list[RunContext], env: Env) -> list[Trained]:
    """`_pods` of runs that differ in their seed alone, as one program (`train_seeds`)."""
    config: PODSConfig = algo_config(ctxs[0].cfg)
    devices = ctxs[0].devices
    network = make_pods(config, env, devices=devices).network
    loops = [
        EpochLoop(
            ctx,
            init_training_state(config, env, network, ctx.key),
            config.num_epochs,
            position=position,
            env_name=env.name,
        )
        for position, ctx in enumerate(ctxs, start=1)
    ]
    make_policy, params, _ = train_seeds(
        config,
        env,
        [ctx.key for ctx in ctxs],
        progress_fn=lambda s, epoch, metrics: loops[s].log(epoch, metrics),
        initial_states=[loop.initial_state for loop in loops],
        checkpoint_fn=lambda s, state, metrics: loops[s].checkpoint(state, metrics),
        devices=devices,
    )
    for loop in loops:
        loop.close()
    return [Trained(make_policy, p, _pods_summary(config, env.name)) for p in params]


def _pods_summary(config: PODSConfig, env_name: str) -> dict[str, Any]:
    return {"algo/order": config.order, "real/transitions": 0, "train/env": env_name}


def train_pods_in_sim(ctx: RunContext) -> Trained:
    return _pods(ctx, ctx.sim)


def train_pods_in_sim_seeds(ctxs: list[RunContext]) -> list[Trained]:
    return _pods_seeds(ctxs, ctxs[0].sim)


def train_oracle(ctx: RunContext) -> Trained:
    return _pods(ctx, ctx.real.twin)


def train_oracle_seeds(ctxs: list[RunContext]) -> list[Trained]:
    return _pods_seeds(ctxs, ctxs[0].real.twin)


class _HDSRun(NamedTuple):
    """What an HDS run hands the loop: its epoch loop, its resume, where it saves."""

    loop: EpochLoop
    resume: LoopCheckpoint | None
    save_data: Callable[[Any], None]
    save_model: Callable[[Any, dict], None]


def _hds_configs(cfg: DictConfig) -> tuple[HDSConfig, LoopConfig, ModelConfig]:
    return (
        algo_config(cfg),
        to_library_config(LoopConfig, cfg.real, "real", skip=LOOP_EXTRAS),
        to_library_config(ModelConfig, cfg.model, "model"),
    )


def _hds_run(ctx: RunContext, config: HDSConfig, position: int = 0) -> _HDSRun:
    artifacts = ctx.run_dir.artifacts
    artifacts.mkdir(parents=True, exist_ok=True)
    data_path, model_path = artifacts / "real_transitions.npz", artifacts / "model"
    # The policy's structure does not depend on the model: the sim env alone builds it.
    network = make_hds(dataclasses.replace(config, beta=0.0), ctx.sim).network
    template = init_training_state(config, ctx.sim, network, ctx.key)
    loop = EpochLoop(
        ctx, template, config.num_epochs, position=position, env_name=hds_env_name(ctx.sim)
    )
    resume = None
    if loop.initial_state is not None and ctx.resume.dataset is not None:
        resume = LoopCheckpoint(ctx.resume.dataset, ctx.resume.model, ctx.resume.model_info)

    def save_data(dataset) -> None:
        dataset.save(data_path)

    def save(model, info: dict) -> None:
        save_model(model_path, model, metadata=info)

    return _HDSRun(loop, resume, save_data, save)


def hds_env_name(sim: Env) -> str:
    """What HDS trains on: the simulator and the model fitted to the real's transitions."""
    return f"{sim.name} + model"


def _hds_trained(result, config: HDSConfig, loop_config, model_config, sim: Env) -> Trained:
    transitions = 0 if result.dataset is None else result.dataset.n_transitions
    summary = {
        "algo/order": config.order,
        "hds/beta": config.beta,
        "model/kind": model_config.kind,
        "model/prediction": model_config.prediction,
        "real/transitions": transitions,
        "real/budget": loop_config.budget,
        "train/env": hds_env_name(sim),
    }
    return Trained(result.make_policy, result.params, summary)


def train_hds(ctx: RunContext) -> Trained:
    config, loop_config, model_config = _hds_configs(ctx.cfg)
    run = _hds_run(ctx, config)
    result = run_loop(
        config,
        loop_config,
        model_config,
        ctx.sim,
        ctx.real.system(loop_config.budget),
        ctx.key,
        initial_state=run.loop.initial_state,
        resume=run.resume,
        progress_fn=run.loop.log,
        checkpoint_fn=run.loop.checkpoint,
        data_fn=run.save_data,
        model_fn=run.save_model,
        devices=ctx.devices,
    )
    run.loop.close()
    return _hds_trained(result, config, loop_config, model_config, ctx.sim)


def train_hds_seeds(ctxs: list[RunContext]) -> list[Trained]:
    """`train_hds` of runs that differ in their seed alone: each its own real system, data
    and model, their HDS epochs as one program (`sim2real.loop.run_loop_seeds`)."""
    config, loop_config, model_config = _hds_configs(ctxs[0].cfg)
    runs = [_hds_run(ctx, config, position) for position, ctx in enumerate(ctxs, start=1)]
    results = run_loop_seeds(
        config,
        loop_config,
        model_config,
        ctxs[0].sim,
        [ctx.real.system(loop_config.budget) for ctx in ctxs],
        [ctx.key for ctx in ctxs],
        initial_states=[run.loop.initial_state for run in runs],
        resumes=[run.resume for run in runs],
        progress_fn=lambda s, epoch, metrics: runs[s].loop.log(epoch, metrics),
        checkpoint_fn=lambda s, state, metrics: runs[s].loop.checkpoint(state, metrics),
        data_fns=[run.save_data for run in runs],
        model_fns=[run.save_model for run in runs],
        devices=ctxs[0].devices,
    )
    for run in runs:
        run.loop.close()
    return [
        _hds_trained(result, config, loop_config, model_config, ctxs[0].sim) for result in results
    ]


def train_pods_sysid(ctx: RunContext) -> Trained:
    """Spends the real budget on random-command episodes, identifies the physics from them,
    then trains PODS in the identified simulator. The identified physics is saved before
    PODS starts, so a resumed run neither collects nor fits again."""
    cfg = ctx.cfg
    loop_config: LoopConfig = to_library_config(LoopConfig, cfg.real, "real", skip=LOOP_EXTRAS)
    sysid_config: SysIDConfig = to_library_config(SysIDConfig, cfg.sysid, "sysid")
    horizon = ctx.real.episode_length
    episodes = loop_config.budget // horizon
    artifacts = ctx.run_dir.artifacts
    artifacts.mkdir(parents=True, exist_ok=True)
    identified_path = artifacts / "sysid.json"
    record = ctx.resume.sysid
    if record is None:
        key_data, key_fit = jax.random.split(jax.random.fold_in(ctx.key, 1))
        real = ctx.real.system(loop_config.budget)
        data = real.play_random(key_data, episodes, correlation=loop_config.random_correlation)
        start = time.perf_counter()
        lab = None
        if sysid_config.family == "lab":
            physics, lab, history = identify_lab(sysid_config, ctx.sim, data, key_fit)
        else:
            physics, history = identify(sysid_config, ctx.sim, data, key_fit)
        record = {
            "family": sysid_config.family,
            "physics": dataclasses.asdict(physics),
            "real_transitions": real.transitions,
            "final_loss": float(history["sysid/loss"][-1]),
            "wall_clock_s": time.perf_counter() - start,
        }
        if lab is not None:
            record["lab"] = {name: getattr(lab, name) for name in LAB_RECORD_FIELDS}
            record["delay_loss"] = [float(x) for x in history["sysid/delay_loss"]]
        atomic_write_json(identified_path, record)
    # A record from before the lab family has no `family`: the physics family made it.
    lab = record.get("lab")
    lab = None if lab is None else LabEffects.off(**lab)
    identified = identified_simulator(ctx.sim, Physics(**record["physics"]), lab)
    # Named as what it is: the lab family's simulator is a `lab`-variant testbed, not the lab.
    trained = _pods(ctx, identified, f"{identified.name}, identified")
    summary = {
        **trained.summary,
        "real/transitions": record["real_transitions"],
        "real/budget": loop_config.budget,
        "sysid/family": record.get("family", "physics"),
        "sysid/final_loss": record.get("final_loss"),
        "sysid/wall_clock_s": record["wall_clock_s"],
        **{f"sysid/{name}": value for name, value in record["physics"].items()},
        **{f"sysid/{name}": value for name, value in (record.get("lab") or {}).items()},
    }
    return trained._replace(summary=summary)


def train_lqr(ctx: RunContext) -> Trained:
    config: LQRConfig = algo_config(ctx.cfg)
    ctx.run_dir.truncate_metrics(-1)
    make_policy, gain, metrics = train_lqr_gain(
        config, ctx.sim, ctx.key, progress_fn=ctx.run_dir.log_metrics
    )
    _save_gain(ctx, gain, metrics)
    return Trained(make_policy, gain, {"real/transitions": 0, "train/env": ctx.sim.name})


def _save_gain(ctx: RunContext, gain: Any, metrics: list[dict]) -> None:
    """The designed gain, checkpointed for `experiments.deploy` to play it again."""
    info = checkpoint_info(ctx, metrics[-1]["train/wall_clock_s"])
    ctx.run_dir.save_checkpoint({"gain": gain}, len(metrics), info)


def train_energy_lqr(ctx: RunContext) -> Trained:
    """The classical swing-up with LQR catch, designed on `sim` (nothing of the real)."""
    config: EnergyLQRConfig = algo_config(ctx.cfg)
    ctx.run_dir.truncate_metrics(-1)
    make_policy, gain, metrics = train_energy_lqr_policy(
        config, ctx.sim, ctx.key, progress_fn=ctx.run_dir.log_metrics
    )
    _save_gain(ctx, gain, metrics)
    return Trained(make_policy, gain, {"real/transitions": 0, "train/env": ctx.sim.name})


def _brax_agent(ctx: RunContext, train_fn: Callable) -> Trained:
    config = algo_config(ctx.cfg)
    run_dir = ctx.run_dir
    run_dir.truncate_metrics(-1)  # Brax's agents cannot resume: a restarted run starts over
    env_name = ctx.sim.name
    if getattr(config, "randomization", None) is not None:
        env_name += ", randomized"
    progress = None
    if ctx.cfg.run.progress_bar:
        from tqdm import tqdm

        progress = tqdm(total=config.num_evals + 1, desc=f"{ctx.cfg.algo.name} {env_name}")

    def log(index: int, metrics: dict) -> None:
        run_dir.log_metrics(index, metrics)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(ret=f"{metrics['train/return']:.1f}")

    make_policy, params, metrics = train_fn(config, ctx.sim, ctx.key, progress_fn=log)
    if progress is not None:
        progress.close()
    # The final params, for whoever wants the policy back (restore with Brax's structure).
    wall_clock = metrics[-1]["train/wall_clock_s"] if metrics else 0.0
    run_dir.save_checkpoint(params, len(metrics), checkpoint_info(ctx, wall_clock))
    return Trained(make_policy, params, {"real/transitions": 0, "train/env": env_name})


def train_apg_baseline(ctx: RunContext) -> Trained:
    return _brax_agent(ctx, train_apg)


def train_ppo_baseline(ctx: RunContext) -> Trained:
    return _brax_agent(ctx, train_ppo)


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """What `algo.name` stands for: how it trains and what its `algo` group builds."""

    train: Callable[[RunContext], Trained]
    config: type
    """The library config its `algo` group builds (`algo_config`)."""
    needs_testbed: str | None = None
    """Why a Brax registry env (`env=brax`, sim only) cannot run it; None where it can."""
    trains_on_twin: bool = False
    """It trains on the real system's differentiable twin (so a gym real cannot serve)."""
    train_seeds: Callable[[list[RunContext]], list[Trained]] | None = None
    """`train` of runs that differ in their seed alone, as one compiled program (the
    `seed_batch` launcher's); None where the algorithm trains one seed at a time."""


ALGORITHMS: dict[str, Algorithm] = {
    "pods": Algorithm(train_pods_in_sim, PODSConfig, train_seeds=train_pods_in_sim_seeds),
    "oracle": Algorithm(
        train_oracle,
        PODSConfig,
        needs_testbed="trains on the real testbed",
        trains_on_twin=True,
        train_seeds=train_oracle_seeds,
    ),
    "hds": Algorithm(
        train_hds,
        HDSConfig,
        needs_testbed="collects transitions of the real testbed",
        train_seeds=train_hds_seeds,
    ),
    "apg": Algorithm(train_apg_baseline, APGConfig),
    "ppo": Algorithm(train_ppo_baseline, PPOConfig),
    "ppo_dr": Algorithm(
        train_ppo_baseline, PPOConfig, needs_testbed="randomizes the testbed's physics"
    ),
    "pods_sysid": Algorithm(
        train_pods_sysid,
        PODSConfig,
        needs_testbed="identifies the testbed's physics from real transitions",
    ),
    "lqr": Algorithm(train_lqr, LQRConfig, needs_testbed="linearizes the cart-pole at the upright"),
    "energy_lqr": Algorithm(
        train_energy_lqr,
        EnergyLQRConfig,
        needs_testbed="swings up and catches the cart-pole's pole from its nominal body",
    ),
}
"""`algo.name` -> its `Algorithm`: the one registry of the algorithms."""

NEEDS_TESTBED: dict[str, str] = {
    name: algorithm.needs_testbed
    for name, algorithm in ALGORITHMS.items()
    if algorithm.needs_testbed is not None
}
"""The algorithms a Brax registry env cannot run, and why (read off `ALGORITHMS`)."""


def algo_config(cfg: DictConfig) -> Any:
    """The library config of `cfg.algo` (its `Algorithm.config`), validated: a bad value
    raises ConfigError naming the key and the value."""
    return to_library_config(ALGORITHMS[cfg.algo.name].config, cfg.algo, "algo", skip=("name",))


def check_algo(cfg: DictConfig) -> None:
    """What the trainer of `cfg.algo.name` would find wrong only once training, found from
    the config alone: one ConfigError line naming the keys and values."""
    name, env = cfg.algo.name, cfg.env
    config = algo_config(cfg)
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
        if getattr(config, "float64", False):
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
        if config.start_states == "visited" and horizon >= env.episode_length:
            raise ConfigError(
                f"algo.start_states=visited starts rollouts within episodes of "
                f"env.episode_length={env.episode_length} steps: it needs an algo.horizon "
                f"shorter than that, got algo.horizon={config.horizon}"
            )
        if config.horizon_start is not None and config.horizon_start > horizon:
            raise ConfigError(
                f"algo.horizon_start grows the horizon up to {source}={horizon} steps: it must "
                f"be <= that, got algo.horizon_start={config.horizon_start}"
            )
    if name in ("hds", "pods_sysid"):
        _check_real_data(cfg, config)
    if name == "lqr" and env.task != "balance":
        raise ConfigError(
            f"algo=lqr stabilizes the upright: it runs on balance tasks, not env.task={env.task}"
        )
    if name == "energy_lqr" and env.system == "double_cartpole" and env.task != "balance":
        raise ConfigError(
            "algo=energy_lqr swings up one pole; on env.system=double_cartpole it runs the "
            f"balance task (its LQR catch), not env.task={env.task}"
        )


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
        except ValueError:
            raise ConfigError(
                f"sysid.lab_timestep={sysid.lab_timestep} does not divide the control period "
                f"{step * frames} s into whole physics steps"
            ) from None


def _check_real_data(cfg: DictConfig, config: Any) -> None:
    """HDS's and pods_sysid's use of `real.budget` for episodes of env.episode_length."""
    loop: LoopConfig = to_library_config(LoopConfig, cfg.real, "real", skip=LOOP_EXTRAS)
    horizon = cfg.env.episode_length
    if cfg.algo.name == "pods_sysid":
        sysid: SysIDConfig = to_library_config(SysIDConfig, cfg.sysid, "sysid")
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
        return
    try:
        loop.rounds(horizon)  # the budget holds the initial data
    except ValueError as err:
        raise ConfigError(f"real: {err}") from None
    model: ModelConfig = to_library_config(ModelConfig, cfg.model, "model")
    if model.rollout_horizon > horizon:
        raise ConfigError(
            f"model.rollout_horizon={model.rollout_horizon} is longer than an episode "
            f"(env.episode_length={horizon})"
        )
    if loop.initial_data == "policy" and config.group_sizes()[1] > 0:
        raise ConfigError(
            "real.initial_data=policy collects with a warm-start policy, which the command "
            "line does not provide: use real.initial_data=random"
        )


__all__ = [
    "ALGORITHMS",
    "NEEDS_TESTBED",
    "Algorithm",
    "RunContext",
    "Trained",
    "algo_config",
    "check_algo",
]
