"""One trainer per `algo.name`: it reads the library's configs the run converted from the
composed config once (`RunContext.configs`), trains (continuing from the run directory's
checkpoint, if any) and returns the policy and its entries for `summary.json`.

    pods     PODS trained in `sim`
    oracle   PODS trained directly on the differentiable `real` testbed: the ceiling
    hds      HDS with a model fitted to real transitions (`sim2real.loop`)
    apg      Brax's analytic policy gradient, in `sim`
    ppo      Brax's PPO, in `sim`
    ppo_dr   Brax's PPO with domain randomization of the physics (`algo.randomization`)
    pods_sysid  PODS in the simulator whose physics `sim2real.sysid` identified from real
             transitions (random commands, the same `real.budget` HDS gets)
    hds_sysid   HDS whose sim rollouts run in the simulator `sim2real.sysid` identified from
             the loop's first real episodes (random commands), the model fitted around it
    lqr      LQR about the upright, from `sim`'s linearization (balance tasks)
    energy_lqr  the classical swing-up: energy pumping, then the LQR catch, all from `sim`

Brax's agents cannot resume mid-training: an APG/PPO run started again trains from the start
(its final params are checkpointed for reuse, not for resuming).

On `env=brax` (Brax's registry envs, sim only) `pods`, `apg` and `ppo` run; the others need
the `real` testbed or the testbeds' physics (NEEDS_TESTBED), and are refused before any
compute (`experiments.checks.check_algo`). What a trainer gets and returns, and the loop around
a library `train` call, are in `experiments.run_context`.
"""

from __future__ import annotations

import dataclasses
import json
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
from dynamics_models import ModelConfig, TransitionDataset, save_model
from experiments.resume import resolved_config
from experiments.run_context import EpochLoop, RunContext, Trained, checkpoint_info
from experiments.run_dir import atomic_write_json
from experiments.schema import to_library_config
from pods.config import HDSConfig, PODSConfig
from pods.hds import make_hds
from pods.programs import ProgramStore
from pods.state import init_training_state
from pods.train import make_pods, train_seeds
from pods.train import train as train_pods
from sim2real.lab import LabEffects
from sim2real.loop import LoopCheckpoint, run_loop, run_loop_seeds
from sim2real.loop_config import LoopConfig
from sim2real.sysid import identify
from sim2real.sysid_lab import LAB_RECORD_FIELDS, identified_simulator, identify_lab
from sim2real.testbed_spec import Physics

if TYPE_CHECKING:
    from brax.envs.base import Env


def _pods(ctx: RunContext, env: Env, env_name: str | None = None) -> Trained:
    """PODS on `env`, which the progress bar and `train/env` name (`env_name`, by default
    its own name)."""
    config: PODSConfig = ctx.configs.algo
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
    config: PODSConfig = ctxs[0].configs.algo
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


def _hds_run(ctx: RunContext, config: HDSConfig, position: int = 0) -> _HDSRun:
    artifacts = ctx.run_dir.artifacts
    artifacts.mkdir(parents=True, exist_ok=True)
    data_path, model_path = artifacts / "real_transitions.npz", artifacts / "model"
    # The policy's structure does not depend on the model: the sim env alone builds it.
    network = make_hds(dataclasses.replace(config, beta=0.0), ctx.sim).network
    template = init_training_state(config, ctx.sim, network, ctx.key)
    env_name = hds_env_name(ctx.sim, identified=ctx.cfg.algo.name == "hds_sysid")
    loop = EpochLoop(ctx, template, config.num_epochs, position=position, env_name=env_name)
    resume = None
    if loop.initial_state is not None and ctx.resume.dataset is not None:
        resume = LoopCheckpoint(ctx.resume.dataset, ctx.resume.model, ctx.resume.model_info)

    def save_data(dataset) -> None:
        dataset.save(data_path)

    def save(model, info: dict) -> None:
        save_model(model_path, model, metadata=info)

    return _HDSRun(loop, resume, save_data, save)


def hds_env_name(sim: Env, identified: bool = False) -> str:
    """What HDS trains on: the simulator (`identified` by sysid) and the model fitted to the
    real's transitions."""
    return f"{sim.name}{', identified' if identified else ''} + model"


def _hds_trained(
    result, config: HDSConfig, loop_config: LoopConfig, model_config: ModelConfig, sim: Env
) -> Trained:
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
    return _train_hds(ctx)


def train_hds_sysid(ctx: RunContext) -> Trained:
    """HDS in the identified simulator: the loop's round 0 episodes (random commands) fit
    `sysid.`'s family, saved before the model is fitted around the identified simulator, so
    a resumed run reads it back instead of fitting again."""
    identified = {}

    def identify_fn(data: TransitionDataset) -> Env:
        record = ctx.resume.sysid
        if record is None:
            key = jax.random.fold_in(ctx.key, _HDS_SYSID_STREAM)
            record = _identify(ctx, data, key, data.n_transitions)
        identified.update(record=record, env=_identified_simulator(ctx, record))
        return identified["env"]

    trained = _train_hds(ctx, identify_fn)
    summary = {
        **trained.summary,
        "train/env": hds_env_name(identified["env"], identified=True),
        **_sysid_summary(identified["record"]),
    }
    return trained._replace(summary=summary)


_HDS_SYSID_STREAM = 3
"""hds_sysid's identification key: fold_in(run key, 3), beside the loop's streams 0-2."""


def _train_hds(
    ctx: RunContext, identify_fn: Callable[[TransitionDataset], Env] | None = None
) -> Trained:
    configs = ctx.configs
    config, loop_config, model_config = configs.algo, configs.loop, configs.model
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
        identify_fn=identify_fn,
        devices=ctx.devices,
    )
    run.loop.close()
    return _hds_trained(result, config, loop_config, model_config, ctx.sim)


def train_hds_seeds(ctxs: list[RunContext]) -> list[Trained]:
    """`train_hds` of runs that differ in their seed alone: each its own real system, data
    and model, their HDS epochs as one program (`sim2real.loop.run_loop_seeds`)."""
    configs = ctxs[0].configs
    config, loop_config, model_config = configs.algo, configs.loop, configs.model
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
    loop_config = ctx.configs.loop
    record = ctx.resume.sysid
    if record is None:
        key_data, key_fit = jax.random.split(jax.random.fold_in(ctx.key, 1))
        real = ctx.real.system(loop_config.budget)
        episodes = loop_config.budget // ctx.real.episode_length
        data = real.play_random(key_data, episodes, correlation=loop_config.random_correlation)
        record = _identify(ctx, data, key_fit, real.transitions)
    identified = _identified_simulator(ctx, record)
    # Named as what it is: the lab family's simulator is a `lab`-variant testbed, not the lab.
    trained = _pods(ctx, identified, f"{identified.name}, identified")
    summary = {
        **trained.summary,
        "real/transitions": record["real_transitions"],
        "real/budget": loop_config.budget,
        **_sysid_summary(record),
    }
    return trained._replace(summary=summary)


def _identify(ctx: RunContext, data: Any, key: jax.Array, real_transitions: int) -> dict:
    """Identifies `sysid.family` from the real `data`; writes what it found, and what that
    cost, to `artifacts/sysid.json` (the record a resumed run reads back) and returns it."""
    sysid_config = ctx.configs.sysid
    start = time.perf_counter()
    lab = None
    if sysid_config.family == "lab":
        physics, lab, history = identify_lab(sysid_config, ctx.sim, data, key)
    else:
        physics, history = identify(sysid_config, ctx.sim, data, key)
    record = {
        "family": sysid_config.family,
        "physics": dataclasses.asdict(physics),
        "real_transitions": int(real_transitions),
        "final_loss": float(history["sysid/loss"][-1]),
        "wall_clock_s": time.perf_counter() - start,
    }
    if lab is not None:
        record["lab"] = {name: getattr(lab, name) for name in LAB_RECORD_FIELDS}
        record["delay_loss"] = [float(x) for x in history["sysid/delay_loss"]]
    artifacts = ctx.run_dir.artifacts
    artifacts.mkdir(parents=True, exist_ok=True)
    atomic_write_json(artifacts / "sysid.json", record)
    return record


def _identified_simulator(ctx: RunContext, record: dict) -> Env:
    # A record from before the lab family has no `family`: the physics family made it.
    lab = record.get("lab")
    lab = None if lab is None else LabEffects.off(**lab)
    return identified_simulator(ctx.sim, Physics(**record["physics"]), lab)


def _sysid_summary(record: dict) -> dict[str, Any]:
    """The identification's entries of `summary.json`."""
    return {
        "sysid/family": record.get("family", "physics"),
        "sysid/final_loss": record.get("final_loss"),
        "sysid/wall_clock_s": record["wall_clock_s"],
        **{f"sysid/{name}": value for name, value in record["physics"].items()},
        **{f"sysid/{name}": value for name, value in (record.get("lab") or {}).items()},
    }


def train_lqr(ctx: RunContext) -> Trained:
    return _designed_gain(ctx, train_lqr_gain)


def train_energy_lqr(ctx: RunContext) -> Trained:
    """The classical swing-up with LQR catch, designed on `sim` (nothing of the real)."""
    return _designed_gain(ctx, train_energy_lqr_policy)


def _designed_gain(ctx: RunContext, design_fn: Callable) -> Trained:
    """A controller `design_fn(config, sim, key, progress_fn=...)` designs on `sim` alone, its
    gain checkpointed for `experiments.deploy` to play it again."""
    ctx.run_dir.truncate_metrics(-1)
    make_policy, gain, metrics = design_fn(
        ctx.configs.algo, ctx.sim, ctx.key, progress_fn=ctx.run_dir.log_metrics
    )
    info = checkpoint_info(ctx, metrics[-1]["train/wall_clock_s"])
    ctx.run_dir.save_checkpoint({"gain": gain}, len(metrics), info)
    return Trained(make_policy, gain, {"real/transitions": 0, "train/env": ctx.sim.name})


def _brax_agent(ctx: RunContext, train_fn: Callable) -> Trained:
    config = ctx.configs.algo
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
    "hds_sysid": Algorithm(
        train_hds_sysid,
        HDSConfig,
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


__all__ = ["ALGORITHMS", "NEEDS_TESTBED", "Algorithm", "algo_config"]
