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

Brax's agents cannot resume mid-training: an APG/PPO run started again trains from the start
(its final params are checkpointed for reuse, not for resuming).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from omegaconf import DictConfig

from baselines.brax_agents import APGConfig, PPOConfig, train_apg, train_ppo
from baselines.lqr import LQRConfig
from baselines.lqr import train as train_lqr_gain
from dynamics_models import ModelConfig, load_dataset, load_model, random_actions, save_model
from dynamics_models.checkpoint import read_sidecar
from experiments.real import RealSpec
from experiments.run_dir import RunDirectory, atomic_write_json
from experiments.schema import LOOP_EXTRAS, ConfigError, to_library_config
from pods.hds import HDSConfig, make_hds
from pods.rollout import Policy
from pods.train import PODSConfig, TrainingState, init_training_state, make_pods
from pods.train import train as train_pods
from sim2real.loop import LoopCheckpoint, LoopConfig, run_loop
from sim2real.sysid import SysIDConfig, identify
from sim2real.testbeds import CartPole, Physics


@dataclasses.dataclass
class RunContext:
    """What every trainer gets: the config, the testbeds, its key and its run directory."""

    cfg: DictConfig
    sim: CartPole
    real: RealSpec
    """The real system: its differentiable twin, and what stands for the physical one."""
    key: jax.Array
    """The training stream of the seed (evaluation draws from another)."""
    run_dir: RunDirectory
    fingerprint: str
    """Hash of the config: a checkpoint of another config is never resumed."""


class Trained(NamedTuple):
    make_policy: Callable[[Any], Policy]
    params: Any
    summary: dict[str, Any]
    """Entries for summary.json beyond the common ones (`real/transitions`, ...)."""


class EpochLoop:
    """Resume, logging, progress bar and checkpoints around a library `train` call."""

    def __init__(self, ctx: RunContext, template: TrainingState, num_epochs: int):
        self.ctx, self.num_epochs = ctx, num_epochs
        self.initial_state, self.elapsed = None, 0.0
        restored = ctx.run_dir.load_checkpoint(template)
        if restored is not None:
            state, info = restored
            if info.get("config") != ctx.fingerprint:
                raise ConfigError(
                    f"{ctx.run_dir.path} holds a run of another config (fingerprint "
                    f"{info.get('config')}, this one {ctx.fingerprint}); start it in a new directory"
                )
            self.initial_state, self.elapsed = state, info["wall_clock_s"]
            ctx.run_dir.truncate_metrics(info["epoch"] - 1)
            print(f"resuming {ctx.run_dir.path} after epoch {info['epoch']}", file=sys.stderr)
        self.progress = None
        if ctx.cfg.run.progress_bar:
            from tqdm import tqdm

            done = 0 if self.initial_state is None else int(self.initial_state.epoch)
            self.progress = tqdm(
                total=num_epochs, initial=done, desc=f"{ctx.cfg.algo.name} {ctx.sim.name}"
            )

    def _wall_clock(self, metrics: dict) -> float:
        return self.elapsed + metrics["train/wall_clock_s"]

    def log(self, epoch: int, metrics: dict) -> None:
        metrics = {**metrics, "train/wall_clock_s": self._wall_clock(metrics)}
        self.ctx.run_dir.log_metrics(epoch, metrics)
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(ret=f"{metrics['train/return']:.1f}")

    def checkpoint(self, state: TrainingState, metrics: dict) -> None:
        epoch = int(state.epoch)
        if epoch % self.ctx.cfg.run.checkpoint_every == 0 or epoch == self.num_epochs:
            info = {"config": self.ctx.fingerprint, "wall_clock_s": self._wall_clock(metrics)}
            self.ctx.run_dir.save_checkpoint(state, epoch, info)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


def _pods(ctx: RunContext, env: CartPole) -> Trained:
    config: PODSConfig = algo_config(ctx.cfg)
    network, _, _, _ = make_pods(config, env)
    loop = EpochLoop(ctx, init_training_state(config, env, network, ctx.key), config.num_epochs)
    make_policy, params, _ = train_pods(
        config,
        env,
        ctx.key,
        progress_fn=loop.log,
        initial_state=loop.initial_state,
        checkpoint_fn=loop.checkpoint,
    )
    loop.close()
    return Trained(make_policy, params, {"algo/order": config.order, "real/transitions": 0})


def train_pods_in_sim(ctx: RunContext) -> Trained:
    return _pods(ctx, ctx.sim)


def train_oracle(ctx: RunContext) -> Trained:
    return _pods(ctx, ctx.real.twin)


def train_hds(ctx: RunContext) -> Trained:
    cfg = ctx.cfg
    config: HDSConfig = algo_config(cfg)
    loop_config: LoopConfig = to_library_config(LoopConfig, cfg.real, "real", skip=LOOP_EXTRAS)
    model_config: ModelConfig = to_library_config(ModelConfig, cfg.model, "model")
    try:
        loop_config.rounds(ctx.real.episode_length)  # the budget holds the initial data
    except ValueError as err:
        raise ConfigError(f"real: {err}") from None

    artifacts = ctx.run_dir.artifacts
    artifacts.mkdir(parents=True, exist_ok=True)
    data_path, model_path = artifacts / "real_transitions.npz", artifacts / "model"
    # The policy's structure does not depend on the model: the sim env alone builds it.
    network, _, _ = make_hds(dataclasses.replace(config, beta=0.0), ctx.sim)
    loop = EpochLoop(ctx, init_training_state(config, ctx.sim, network, ctx.key), config.num_epochs)
    resume = None
    if loop.initial_state is not None and data_path.exists():
        dataset = load_dataset(data_path)
        model = model_info = None
        if model_path.with_suffix(".json").exists():
            model = load_model(model_path)
            model_info = read_sidecar(model_path)["metadata"]
        resume = LoopCheckpoint(dataset, model, model_info)

    def save_data(dataset) -> None:
        dataset.save(data_path)

    def save(model, info: dict) -> None:
        save_model(model_path, model, metadata=info)

    result = run_loop(
        config,
        loop_config,
        model_config,
        ctx.sim,
        ctx.real.system(loop_config.budget),
        ctx.key,
        initial_state=loop.initial_state,
        resume=resume,
        progress_fn=loop.log,
        checkpoint_fn=loop.checkpoint,
        data_fn=save_data,
        model_fn=save,
    )
    loop.close()
    transitions = 0 if result.dataset is None else result.dataset.n_transitions
    summary = {
        "algo/order": config.order,
        "hds/beta": config.beta,
        "model/kind": model_config.kind,
        "real/transitions": transitions,
        "real/budget": loop_config.budget,
    }
    return Trained(result.make_policy, result.params, summary)


def train_pods_sysid(ctx: RunContext) -> Trained:
    """Spends the real budget on random-command episodes, identifies the physics from them,
    then trains PODS in the identified simulator. The identified physics is saved before
    PODS starts, so a resumed run neither collects nor fits again."""
    cfg = ctx.cfg
    loop_config: LoopConfig = to_library_config(LoopConfig, cfg.real, "real", skip=LOOP_EXTRAS)
    sysid_config: SysIDConfig = to_library_config(SysIDConfig, cfg.sysid, "sysid")
    horizon = ctx.real.episode_length
    episodes = loop_config.budget // horizon
    if episodes < 1:
        raise ConfigError(
            f"real.budget={loop_config.budget} holds no episode of {horizon} steps for sysid"
        )
    artifacts = ctx.run_dir.artifacts
    artifacts.mkdir(parents=True, exist_ok=True)
    identified_path = artifacts / "sysid.json"
    if identified_path.exists():
        record = json.loads(identified_path.read_text())
    else:
        key_data, key_fit = jax.random.split(jax.random.fold_in(ctx.key, 1))
        real = ctx.real.system(loop_config.budget)
        commands = random_actions(
            key_data,
            episodes,
            horizon,
            real.action_size,
            correlation=loop_config.random_correlation,
        )
        data = real.play(jax.random.fold_in(key_data, 1), commands)
        start = time.perf_counter()
        physics, history = identify(sysid_config, ctx.sim, data, key_fit)
        record = {
            "physics": dataclasses.asdict(physics),
            "real_transitions": real.transitions,
            "final_loss": float(history["sysid/loss"][-1]),
            "wall_clock_s": time.perf_counter() - start,
        }
        atomic_write_json(identified_path, record)
    identified = ctx.sim.with_physics(Physics(**record["physics"]))
    trained = _pods(ctx, identified)
    summary = {
        **trained.summary,
        "real/transitions": record["real_transitions"],
        "real/budget": loop_config.budget,
        "sysid/wall_clock_s": record["wall_clock_s"],
        **{f"sysid/{name}": value for name, value in record["physics"].items()},
    }
    return trained._replace(summary=summary)


def train_lqr(ctx: RunContext) -> Trained:
    config: LQRConfig = algo_config(ctx.cfg)
    if ctx.sim.task != "balance":
        raise ConfigError(
            f"algo=lqr stabilizes the upright: it runs on balance tasks, not {ctx.sim.task!r}"
        )
    ctx.run_dir.truncate_metrics(-1)
    make_policy, gain, _ = train_lqr_gain(
        config, ctx.sim, ctx.key, progress_fn=ctx.run_dir.log_metrics
    )
    return Trained(make_policy, gain, {"real/transitions": 0})


def _brax_agent(ctx: RunContext, train_fn: Callable) -> Trained:
    config = algo_config(ctx.cfg)
    run_dir = ctx.run_dir
    if run_dir.checkpoint_info_path.exists():
        info = json.loads(run_dir.checkpoint_info_path.read_text())
        if info.get("config") != ctx.fingerprint:
            raise ConfigError(
                f"{run_dir.path} holds a run of another config (fingerprint "
                f"{info.get('config')}, this one {ctx.fingerprint}); start it in a new directory"
            )
    run_dir.truncate_metrics(-1)  # Brax's agents cannot resume: a restarted run starts over
    progress = None
    if ctx.cfg.run.progress_bar:
        from tqdm import tqdm

        progress = tqdm(total=config.num_evals + 1, desc=f"{ctx.cfg.algo.name} {ctx.sim.name}")

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
    run_dir.save_checkpoint(
        params, len(metrics), {"config": ctx.fingerprint, "wall_clock_s": wall_clock}
    )
    return Trained(make_policy, params, {"real/transitions": 0})


def train_apg_baseline(ctx: RunContext) -> Trained:
    return _brax_agent(ctx, train_apg)


def train_ppo_baseline(ctx: RunContext) -> Trained:
    return _brax_agent(ctx, train_ppo)


TRAINERS: dict[str, Callable[[RunContext], Trained]] = {
    "pods": train_pods_in_sim,
    "oracle": train_oracle,
    "hds": train_hds,
    "apg": train_apg_baseline,
    "ppo": train_ppo_baseline,
    "ppo_dr": train_ppo_baseline,
    "pods_sysid": train_pods_sysid,
    "lqr": train_lqr,
}
"""`algo.name` -> trainer."""

ALGO_CONFIGS: dict[str, type] = {
    "pods": PODSConfig,
    "oracle": PODSConfig,
    "hds": HDSConfig,
    "apg": APGConfig,
    "ppo": PPOConfig,
    "ppo_dr": PPOConfig,
    "pods_sysid": PODSConfig,
    "lqr": LQRConfig,
}
"""`algo.name` -> the library config its `algo` group builds."""


def algo_config(cfg: DictConfig) -> Any:
    """The library config of `cfg.algo` (ALGO_CONFIGS), validated: a bad value raises
    ConfigError naming the key and the value."""
    return to_library_config(ALGO_CONFIGS[cfg.algo.name], cfg.algo, "algo", skip=("name",))


__all__ = ["ALGO_CONFIGS", "TRAINERS", "RunContext", "Trained", "algo_config"]
