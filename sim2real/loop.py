"""The sim2real loop: HDS optimizing partly through a model of real transitions, with the real
data collected under a budget and the model refitted as the data grows.

    round 0:  record `initial_trajectories` real episodes (random commands, or the warm-start
              policy plus noise); with an `identify_fn`, identify the simulator's physics
              from them; fit the model on them
    epochs:   HDS epochs (`pods.hds`): a fraction beta of the rollouts in the learned model,
              the rest in `sim`
    round r:  before epoch r * collect_every, record `collect_trajectories` real episodes of the
              current policy plus noise, add them to the data, refit the model on all of it
    ...       until the next round would exceed the budget; the remaining epochs keep the
              last model

How the loop spends its budget is `sim2real.loop_config.LoopConfig`; its real data, model
and identified simulator are kept by `sim2real.loop_data.RealDataAndModel`. HDS itself sees only
envs; the real system is reached through `RealSystem` alone, which counts every transition
and refuses to go past the budget. A refitted model has the structure of the previous one, so
it rides into the same compiled HDS epoch as an argument.

Everything random comes from the run's key: round r's collection from fold_in(data key, r),
its fit from fold_in(fit key, r) and its train/validation split from seed r; epoch e's from
fold_in(epoch key, e). A run resumed from a checkpoint (the training state, the real data,
and the model if it was saved) therefore repeats exactly what an uninterrupted run does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dynamics_models import ModelConfig, TransitionDataset
from pods.config import HDSConfig
from pods.drivers import (
    Metrics,
    run_epochs,
    run_seed_epochs,
    seed_batch_epoch,
    seed_slice,
    stack_seeds,
)
from pods.hds import HDSProgram, make_hds, step_counters
from pods.networks import PolicyParams
from pods.rollout import Policy
from pods.state import TrainingState, policy_learner, start_training
from sim2real.loop_config import LoopConfig
from sim2real.loop_data import EPOCH_STREAM, LoopCheckpoint, RealDataAndModel
from sim2real.real_system import RealSystem


class LoopResult(NamedTuple):
    make_policy: Callable[[PolicyParams], Policy]
    params: PolicyParams
    metrics: list[Metrics]
    """One dict per epoch run by this call: HDS's metrics plus `real/transitions`,
    `real/rounds` (collections after the initial data) and `model/validation_loss` (of the
    model in use: normalized MSE on held-out real episodes)."""
    dataset: TransitionDataset | None
    """The real data (None when beta = 0: no real transition was needed)."""
    model: Any


def run_loop(
    config: HDSConfig,
    loop: LoopConfig,
    model_config: ModelConfig,
    sim_env: Any,
    real: RealSystem,
    key: jax.Array,
    *,
    initial_params: PolicyParams | None = None,
    initial_state: TrainingState | None = None,
    resume: LoopCheckpoint | None = None,
    progress_fn: Callable[[int, Metrics], None] | None = None,
    checkpoint_fn: Callable[[TrainingState, Metrics], None] | None = None,
    data_fn: Callable[[TransitionDataset], None] | None = None,
    model_fn: Callable[[Any, dict], None] | None = None,
    identify_fn: Callable[[TransitionDataset], Any] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> LoopResult:
    """Trains a policy with HDS and real data collected under `real`'s budget (see the module
    docstring). `initial_state` and `resume` (saved through `checkpoint_fn`, `data_fn` and
    `model_fn`) continue an interrupted run; `initial_params` warm-starts a new one.

    `identify_fn(round 0's episodes)`, if given, returns the simulator HDS trains in and the
    model corrects instead of `sim_env` (system identification; a resumed run calls it
    again: it should persist what it found). `data_fn(dataset)` after every collection and
    `model_fn(model, info)` after every fit (`info`: its round and validation loss) let a
    caller persist them before the epochs that depend on them run. `train/wall_clock_s`
    includes collection and fitting; rollouts shard over `devices` (default: all local).
    """
    clock_start = time.perf_counter()
    horizon = real.episode_length
    _check_real(real, sim_env)
    _, k_model = config.group_sizes()
    if k_model:
        loop.rounds(horizon)  # raises if the budget cannot hold the initial data
        if loop.initial_data == "policy" and initial_params is None and resume is None:
            raise ValueError("LoopConfig.initial_data='policy' needs initial_params to collect")
    elif identify_fn is not None:
        raise ValueError("identify_fn needs the real data that only beta > 0 records")

    with jax.enable_x64(True) if config.float64 else nullcontext():
        real_data = RealDataAndModel(
            loop,
            model_config,
            sim_env,
            real,
            key,
            make_policy=policy_learner(config, [sim_env], config.horizon or horizon).make_policy,
            dataset=resume.dataset if resume is not None else None,
            data_fn=data_fn,
            model_fn=model_fn,
            identify_fn=identify_fn,
        )
        # 1. Round 0's real data, the simulator identified from it, and the model fitted on
        # them (or the resumed run's).
        if k_model:
            real_data.start(resume, initial_params)
        sim_env = real_data.sim_env

        hds = make_hds(config, sim_env, real_data.model_env, devices=devices)
        real_data.make_policy = hds.make_policy
        state, key_epochs = _start(config, sim_env, hds, key, initial_state, initial_params)

        def report(epoch_index: int, metrics: Metrics) -> None:
            metrics.update(real_data.metrics())
            if progress_fn is not None:
                progress_fn(epoch_index, metrics)

        def args_for_epoch(epoch: int, state: TrainingState) -> tuple:
            # 2. The collections due before this epoch, and a refit on all the data.
            if k_model:
                real_data.catch_up(epoch, state.params)
            return (real_data.model_env,)

        # 3. The HDS epochs.
        state, metrics = run_epochs(
            jax.jit(hds.epoch),
            state,
            key_epochs,
            config.num_epochs,
            step_counters(config, sim_env),
            args_for_epoch=args_for_epoch,
            progress_fn=report,
            checkpoint_fn=checkpoint_fn,
            clock_start=clock_start,
        )
        return LoopResult(
            real_data.make_policy, state.policy_params, metrics, real_data.dataset, real_data.model
        )


def run_loop_seeds(
    config: HDSConfig,
    loop: LoopConfig,
    model_config: ModelConfig,
    sim_env: Any,
    reals: Sequence[RealSystem],
    keys: Sequence[jax.Array],
    *,
    initial_states: Sequence[TrainingState | None] | None = None,
    resumes: Sequence[LoopCheckpoint | None] | None = None,
    progress_fn: Callable[[int, int, Metrics], None] | None = None,
    checkpoint_fn: Callable[[int, TrainingState, Metrics], None] | None = None,
    data_fns: Sequence[Callable[[TransitionDataset], None] | None] | None = None,
    model_fns: Sequence[Callable[[Any, dict], None] | None] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> list[LoopResult]:
    """`run_loop` for S seeds, their HDS epochs as one compiled program: the epoch vmapped
    over the seeds, each seed's model env stacked beside the others'. Seed s has its own real
    system `reals[s]` (its budget), key, data and model, and is `run_loop(..., reals[s],
    keys[s])` up to the order of some sums; its collections and refits run seed by seed in
    Python before the epoch they are due in. The callbacks take the seed's index first; a
    seed resumes from `initial_states[s]` and `resumes[s]` (seeds apart train alone until
    they catch up, as in `pods.train.train_seeds`). No warm start: the initial data are
    random commands."""
    clock_start = time.perf_counter()
    seeds = len(keys)
    initial_states = initial_states or [None] * seeds
    resumes = resumes or [None] * seeds
    data_fns, model_fns = data_fns or [None] * seeds, model_fns or [None] * seeds
    _check_seeds(config, loop, sim_env, reals, seeds, initial_states, resumes)
    _, k_model = config.group_sizes()

    with jax.enable_x64(True) if config.float64 else nullcontext():
        horizon = config.horizon or reals[0].episode_length
        make_policy = policy_learner(config, [sim_env], horizon).make_policy
        real_data = _seeds_data(
            loop, model_config, sim_env, reals, keys, resumes, data_fns, model_fns, make_policy
        )
        # 1. Each seed's round-0 data and model (or its resumed run's).
        if k_model:
            for seed_data, resume in zip(real_data, resumes, strict=True):
                seed_data.start(resume, None)
        hds = make_hds(config, sim_env, real_data[0].model_env, devices=devices)
        states, epoch_keys = _seeds_start(config, sim_env, hds, real_data, keys, initial_states)
        model_envs = [stack_seeds([d.model_env for d in real_data]) if k_model else None]

        def args_for_epoch(epoch: int, due: list[int], states: TrainingState) -> tuple:
            # 2. The collections due before this epoch, and a refit, for each seed it trains.
            if k_model:
                models = [d.model for d in real_data]
                for s in due:
                    real_data[s].catch_up(epoch, seed_slice(states, s).params)
                if any(d.model is not m for d, m in zip(real_data, models, strict=True)):
                    model_envs[0] = stack_seeds([d.model_env for d in real_data])
            return (model_envs[0],)

        def report(s: int, epoch: int, metrics: Metrics) -> None:
            metrics.update(real_data[s].metrics())
            if progress_fn is not None:
                progress_fn(s, epoch, metrics)

        # 3. The epochs, every seed's at once.
        history = run_seed_epochs(
            jax.jit(seed_batch_epoch(hds.epoch)),
            stack_seeds(states),
            jnp.stack(epoch_keys),
            config.num_epochs,
            step_counters(config, sim_env),
            args_for_epoch=args_for_epoch,
            progress_fn=report,
            checkpoint_fn=checkpoint_fn,
            clock_start=clock_start,
        )
        return [
            LoopResult(
                hds.make_policy,
                seed_slice(history.state, s).policy_params,
                history.metrics[s],
                seed_data.dataset,
                seed_data.model,
            )
            for s, seed_data in enumerate(real_data)
        ]


def _check_seeds(
    config: HDSConfig,
    loop: LoopConfig,
    sim_env: Any,
    reals: Sequence[RealSystem],
    seeds: int,
    initial_states: Sequence[TrainingState | None],
    resumes: Sequence[LoopCheckpoint | None],
) -> None:
    """`run_loop_seeds`' arguments: one of each per seed, every real system in the layout
    of `sim_env`, and no warm start."""
    for name, values in (
        ("reals", reals),
        ("initial_states", initial_states),
        ("resumes", resumes),
    ):
        if len(values) != seeds:
            raise ValueError(f"{len(values)} {name} for {seeds} seeds")
    for real in reals:
        _check_real(real, sim_env)
    _, k_model = config.group_sizes()
    if loop.initial_data == "policy" and k_model:
        raise ValueError("LoopConfig.initial_data='policy' needs a warm-start policy: run_loop")


def _seeds_data(
    loop: LoopConfig,
    model_config: ModelConfig,
    sim_env: Any,
    reals: Sequence[RealSystem],
    keys: Sequence[jax.Array],
    resumes: Sequence[LoopCheckpoint | None],
    data_fns: Sequence[Callable[[TransitionDataset], None] | None],
    model_fns: Sequence[Callable[[Any, dict], None] | None],
    make_policy: Callable[[PolicyParams], Policy],
) -> list[RealDataAndModel]:
    """Each seed's real data and model (a resumed seed's data from its checkpoint)."""
    return [
        RealDataAndModel(
            loop,
            model_config,
            sim_env,
            real,
            key,
            make_policy=make_policy,
            dataset=resume.dataset if resume is not None else None,
            data_fn=data_fn,
            model_fn=model_fn,
        )
        for real, key, resume, data_fn, model_fn in zip(
            reals, keys, resumes, data_fns, model_fns, strict=True
        )
    ]


def _seeds_start(
    config: HDSConfig,
    sim_env: Any,
    hds: HDSProgram,
    real_data: list[RealDataAndModel],
    keys: Sequence[jax.Array],
    initial_states: Sequence[TrainingState | None],
) -> tuple[list[TrainingState], list[jax.Array]]:
    """Each seed's training state (or its resumed one) and epoch key; the seeds' data collect
    with `hds`'s policy from here on."""
    states, epoch_keys = [], []
    for seed_data, key, initial_state in zip(real_data, keys, initial_states, strict=True):
        seed_data.make_policy = hds.make_policy
        state, key_epochs = _start(config, sim_env, hds, key, initial_state)
        states.append(state)
        epoch_keys.append(key_epochs)
    return states, epoch_keys


def _start(
    config: HDSConfig,
    sim_env: Any,
    hds: HDSProgram,
    key: jax.Array,
    initial_state: TrainingState | None,
    initial_params: PolicyParams | None = None,
) -> tuple[TrainingState, jax.Array]:
    """The loop's first state and its epochs' key (`start_training`), from the epochs' own
    stream of the run's key."""
    return start_training(
        config,
        sim_env,
        hds.network,
        jax.random.fold_in(key, EPOCH_STREAM),
        initial_state=initial_state,
        initial_params=initial_params,
    )


def _check_real(real: RealSystem, sim_env: Any) -> None:
    for name in ("observation_size", "action_size"):
        if getattr(real, name) != getattr(sim_env, name):
            raise ValueError(
                f"the real system's {name} is {getattr(real, name)}, the simulator's "
                f"{getattr(sim_env, name)}: map its layout with a GymAdapter"
            )


__all__ = ["LoopCheckpoint", "LoopResult", "run_loop", "run_loop_seeds"]
