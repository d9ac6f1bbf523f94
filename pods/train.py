"""PODS: Policy Optimization via Differentiable Simulation (Mora et al., ICML 2021).

Algorithm 1, one epoch (`make_pods(...).epoch`, one jitted pure function):
  1. roll out the deterministic policy pi_theta for N steps from k fresh initial states
     (with Gaussian exploration noise on the actions, if asked) -> s[0..N], a[0..N-1], V;
  2. improve the actions with the simulator's derivatives: a' = a + alpha dV/da (first order)
     or a' = a + alpha H^-1 dV/da (second), alpha from a batched line search that never
     accepts a worse return (`roll_out_and_improve`, with `pods.improve`);
  3. distill: Adam on 0.5 ||pi_theta(s_t) - a'_t||^2 over the improved trajectories, all of
     them as in the paper or the elite (`pods.distill.distill_improved`).
Then the loop: `train` for one seed, `train_seeds` for a batch of seeds in one program, both
running the compiled epoch with `pods.drivers`. The hyperparameters are `pods.config`'s
`PODSConfig`; what one epoch hands the next is `pods.state`'s `TrainingState`. The k rollouts
may be split in groups, each in its own env (`make_grouped_pods`): PODS is one group, HDS
(`pods.hds`) adds a learned model's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import NamedTuple

import jax
import jax.numpy as jnp
from brax.envs.base import Env
from jax.sharding import Mesh

from pods.config import PODSConfig, check_horizons, grown_horizon
from pods.distill import distill_improved, elite
from pods.drivers import (
    Metrics,
    run_epochs,
    run_seed_epochs,
    seed_batch_epoch,
    seed_slice,
    stack_seeds,
)
from pods.improve import Improvement, SearchStep, make_improvement_step
from pods.networks import PolicyNetwork, PolicyParams
from pods.programs import ProgramStore
from pods.rollout import (
    EpisodeLimit,
    Policy,
    episode_of_policy,
    policy_states_after,
    reset_batch,
    with_episode_limit,
)
from pods.sharding import check_divisible, device_count, shard_trajectories, trajectory_mesh
from pods.state import (
    TrainingState,
    policy_learner,
    start_training,
)

# --- one epoch: roll out, improve, distill ----------------------------------------------------


class RolloutGroup(NamedTuple):
    """Some of an epoch's k rollouts, all in one env: PODS has one group, HDS (`pods.hds`) the
    learned model's and the simulator's. Each group is rolled out and improved in its own env
    (never a `lax.cond` under `vmap`, which would run every env for every trajectory) and
    picks its own elite; distillation reads the groups together, in order."""

    env: Env | None
    """The group's env; None only for an empty group (HDS's model at beta = 0)."""
    size: int
    """Its rollouts per epoch; an empty group is never rolled out."""
    key_fold: int | None = None
    """Its key is the epoch's improvement key folded in with this (None: that key itself)."""
    name: str | None = None
    """If given, the epoch reports the group's mean return as `train/return_<name>` (NaN for
    an empty group)."""


class PODSProgram(NamedTuple):
    """PODS's pure pieces for one config and its groups of rollouts; neither function is
    jitted. `envs`, where given, replaces the groups' envs in order (same structure: a pytree
    env such as `LearnedEnv` passed to the jitted function reuses its compiled program)."""

    network: PolicyNetwork
    make_policy: Callable[[PolicyParams], Policy]
    improve: Callable[..., Improvement]
    """`improve(params, epoch, key, envs=None)`: the epoch's simulation work alone (rollouts,
    derivatives, line searches)."""
    epoch: Callable[..., tuple[TrainingState, dict[str, jax.Array]]]
    """`epoch(state, key, envs=None)`: the whole PODS epoch."""


def make_pods(
    config: PODSConfig, env: Env, *, devices: Sequence[jax.Device] | None = None
) -> PODSProgram:
    """Builds PODS's pure pieces for one config and env: one group of k rollouts. The rollouts
    are sharded over `devices` (default: every local device; see `pods.sharding`)."""
    group = RolloutGroup(env, config.num_trajectories)
    return make_grouped_pods(config, [group], episode_length=env.episode_length, devices=devices)


def make_grouped_pods(
    config: PODSConfig,
    groups: Sequence[RolloutGroup],
    *,
    episode_length: int,
    devices: Sequence[jax.Device] | None = None,
) -> PODSProgram:
    """Builds PODS's pure pieces for k rollouts split in `groups` (their sizes sum to
    `config.num_trajectories`), all in episodes of `episode_length` steps. Each group's
    rollouts are sharded over `devices` (default: every local device)."""
    horizon = config.horizon or episode_length
    check_horizons(config, horizon, episode_length)
    k = config.num_trajectories
    if sum(group.size for group in groups) != k:
        raise ValueError(f"the groups' sizes {[g.size for g in groups]} do not sum to k = {k}")
    learner = policy_learner(config, [g.env for g in groups if g.env is not None], horizon)
    mesh = trajectory_mesh(devices)
    check_divisible(device_count(mesh), config.rollout_batches())
    search_step = make_improvement_step(config, learner.step_sizes)
    dtype = jnp.float64 if config.float64 else jnp.float32

    def improve(params: PolicyParams, epoch: jax.Array, key: jax.Array, envs=None):
        envs = [group.env for group in groups] if envs is None else envs
        improvements = [
            roll_out_and_improve(
                config,
                env,
                params,
                epoch,
                key if group.key_fold is None else jax.random.fold_in(key, group.key_fold),
                make_policy=learner.make_policy,
                search_step=search_step,
                size=group.size,
                horizon=horizon,
                episode_length=episode_length,
                mesh=mesh,
            )
            for group, env in zip(groups, envs, strict=True)
            if group.size
        ]
        return improvements[0] if len(improvements) == 1 else Improvement.concatenate(improvements)

    def epoch(state: TrainingState, key: jax.Array, envs=None):
        key_improve, key_distill = jax.random.split(key)
        # 1-2. Roll out and improve the actions, each group in its own env.
        improvement = improve(state.params, state.epoch, key_improve, envs)
        # 3. Distill the improved actions (of each group's elite, if asked) into the policy.
        new_state, metrics = distill_improved(
            config,
            state,
            improvement,
            key_distill,
            network=learner.network,
            optimizer=learner.optimizer,
        )
        values, start = improvement.evaluation.value, 0
        for group in groups:
            if group.name is not None:
                metrics[f"train/return_{group.name}"] = (
                    jnp.mean(values[start : start + group.size])
                    if group.size
                    else jnp.full((), jnp.nan, dtype)
                )
            start += group.size
        return new_state, metrics

    return PODSProgram(learner.network, learner.make_policy, improve, epoch)


# --- steps 1-2: roll out and improve ----------------------------------------------------------


def roll_out_and_improve(
    config: PODSConfig,
    env: Env,
    params: PolicyParams,
    epoch: jax.Array,
    key: jax.Array,
    *,
    make_policy: Callable[[PolicyParams], Policy],
    search_step: SearchStep,
    size: int,
    horizon: int,
    episode_length: int,
    mesh: Mesh | None = None,
) -> Improvement:
    """PODS steps 1-2 from `size` initial states of `env` (fresh, or visited by the policy
    within episodes of `episode_length` steps: `config.start_states`), and the elite among
    them; the rollouts split over `mesh`'s devices, if given. With a growing horizon
    (`config.horizon_start`) the data rollouts and the improvement run in episodes ended at
    the epoch's horizon; the evaluation rollouts never are."""
    dtype = jnp.float64 if config.float64 else jnp.float32
    key_reset, key_noise = jax.random.split(key)
    states = shard_trajectories(reset_batch(env, key_reset, size), mesh)
    policy = make_policy(params)
    if config.start_states == "visited":
        # A key of its own, so that the reset states and the noise are those of `reset`.
        offsets = jax.random.randint(
            jax.random.fold_in(key, 3), (size,), 0, episode_length - horizon + 1
        )
        states = shard_trajectories(
            policy_states_after(env, states, policy, offsets, episode_length - horizon), mesh
        )
    # train/return is always the deterministic policy's over the whole horizon, comparable
    # across configs.
    evaluation = jax.vmap(lambda s: episode_of_policy(env, s, policy, horizon))(states)
    if config.horizon_start is not None:
        # The rollouts to improve end their episodes at the epoch's horizon.
        env = EpisodeLimit(env)
        states = with_episode_limit(states, grown_horizon(config, horizon, epoch))
    noise = config.exploration_noise * config.exploration_decay ** epoch.astype(dtype)
    if config.exploration_noise > 0 or config.horizon_start is not None:
        data = jax.vmap(
            lambda s, key: episode_of_policy(env, s, policy, horizon, key=key, action_noise=noise)
        )(states, jax.random.split(key_noise, size))
    else:
        data = evaluation

    def scanned_step(trajectories, step_key):
        actions, observations, active = trajectories
        step = search_step(env, states, actions, observations, active, step_key)
        return (step.actions, step.observations, step.active), step

    _, steps = jax.lax.scan(
        scanned_step,
        (data.actions, data.observations, data.active),
        jax.random.split(jax.random.fold_in(key, 2), config.improve_iterations),
    )
    return Improvement(
        data=data,
        evaluation=evaluation,
        steps=steps,
        selected=elite(steps.value_improved[-1], config.elite_fraction),
        noise=noise,
    )


# --- the loop ---------------------------------------------------------------------------------


def train(
    config: PODSConfig,
    env: Env,
    key: jax.Array,
    *,
    progress_fn: Callable[[int, Metrics], None] | None = None,
    initial_params: PolicyParams | None = None,
    initial_state: TrainingState | None = None,
    checkpoint_fn: Callable[[TrainingState, Metrics], None] | None = None,
    devices: Sequence[jax.Device] | None = None,
    programs: ProgramStore | None = None,
) -> tuple[Callable[[PolicyParams], Policy], PolicyParams, list[Metrics]]:
    """Trains a policy with PODS; returns (make_policy, params, metrics per epoch).

    `progress_fn(epoch, metrics)` is called after every epoch, with `train/sim_steps` and
    `train/wall_clock_s` cumulative. `initial_params` warm-starts from earlier params.
    `checkpoint_fn(state, metrics)` receives the training state after every epoch; passing
    such a state back as `initial_state` (same config and key) resumes the run, and the
    resumed epochs are identical to those of a run never interrupted: epoch e's randomness is
    `fold_in(key, e)`, a function of the epoch alone. `wall_clock_s` counts from this call.
    The rollouts are sharded over `devices` (default: all local ones; see `make_pods`).
    With a `programs` store (whose context must describe `env`) the compiled epoch is loaded
    from it where a process before stored it, instead of traced again: the same results.
    """
    with jax.enable_x64(True) if config.float64 else nullcontext():
        pods = make_pods(config, env, devices=devices)
        state, key_epochs = start_training(
            config,
            env,
            pods.network,
            key,
            initial_state=initial_state,
            initial_params=initial_params,
        )
        horizon = config.horizon or env.episode_length
        counters = {"train/sim_steps": config.sim_steps_per_epoch(horizon, env.episode_length)}
        # The clock counts the trace, as a jitted epoch's first call does.
        clock_start = time.perf_counter()
        if programs is None:
            epoch = jax.jit(pods.epoch)
        else:
            epoch = programs.program(
                "pods_epoch",
                pods.epoch,
                (state, key_epochs),
                description=f"pods.train.train {config!r} devices={devices!r}",
            )
        history = run_epochs(
            epoch,
            state,
            key_epochs,
            config.num_epochs,
            counters,
            progress_fn=progress_fn,
            checkpoint_fn=checkpoint_fn,
            clock_start=clock_start,
        )
        return pods.make_policy, history.state.policy_params, history.metrics


def train_seeds(
    config: PODSConfig,
    env: Env,
    keys: Sequence[jax.Array],
    *,
    progress_fn: Callable[[int, int, Metrics], None] | None = None,
    initial_states: Sequence[TrainingState | None] | None = None,
    checkpoint_fn: Callable[[int, TrainingState, Metrics], None] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> tuple[Callable[[PolicyParams], Policy], list[PolicyParams], list[list[Metrics]]]:
    """Trains one policy per key in one compiled program, the epoch vmapped over the seeds;
    returns (make_policy, params per seed, metrics per seed and epoch).

    Seed s is `train(config, env, keys[s])`: the same keys and the same arithmetic, batched,
    so its metrics equal that run's to float rounding (vmapped matrix products may sum in
    another order; the test states the tolerance). The callbacks take the seed's index
    first: `progress_fn(s, epoch, metrics)`, `checkpoint_fn(s, state, metrics)`. Each seed
    resumes from its own `initial_states[s]` (None: a fresh start); where their epochs
    differ (a batch killed between two seeds' checkpoints), the seeds behind train alone
    until they catch up, the others' states passing through unchanged. `wall_clock_s` is the
    batch's clock, from this call.
    """
    initial_states = initial_states or [None] * len(keys)
    if len(initial_states) != len(keys):
        raise ValueError(f"{len(initial_states)} initial states for {len(keys)} seeds")
    with jax.enable_x64(True) if config.float64 else nullcontext():
        pods = make_pods(config, env, devices=devices)
        states, epoch_keys = zip(
            *(
                start_training(config, env, pods.network, key, initial_state=initial_state)
                for key, initial_state in zip(keys, initial_states, strict=True)
            ),
            strict=True,
        )
        horizon = config.horizon or env.episode_length
        counters = {"train/sim_steps": config.sim_steps_per_epoch(horizon, env.episode_length)}
        history = run_seed_epochs(
            jax.jit(seed_batch_epoch(pods.epoch)),
            stack_seeds(states),
            jnp.stack(epoch_keys),
            config.num_epochs,
            counters,
            progress_fn=progress_fn,
            checkpoint_fn=checkpoint_fn,
        )
        params = [seed_slice(history.state, s).policy_params for s in range(len(keys))]
        return pods.make_policy, params, history.metrics


__all__ = [
    "PODSProgram",
    "RolloutGroup",
    "distill_improved",
    "make_grouped_pods",
    "make_pods",
    "roll_out_and_improve",
    "train",
    "train_seeds",
]
