"""HDS: PODS with part of its rollouts in a learned dynamics model (Steinhauser et al., ETH 2024).

One epoch is PODS's (`pods.train`) with the k rollouts split in two groups of rollouts
(`pods.train.RolloutGroup`):
  1. sample k initial states; round(beta * k) of them are rolled out in the learned `model`
     env, the rest in `sim`, each group vmapped in its own env, with decaying Gaussian
     exploration noise;
  2. improve each group's actions with its own env's derivatives; the step size alpha comes
     from PODS's batched line search or from simulated annealing
     (`pods.step_size.anneal_step_size`), and neither ever accepts a worse return;
  3. distill the improved (s, a') pairs of both groups together into one policy.

With beta = 0 and the line search, the one group is PODS's, with PODS's key, so HDS at
beta = 0 reproduces PODS exactly. With beta = 1 the sim group is empty and `sim.step` is never
traced into the data rollouts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from brax.envs.base import Env

from pods.config import HDSConfig
from pods.drivers import Metrics, run_epochs
from pods.networks import PolicyNetwork, PolicyParams
from pods.rollout import Policy
from pods.state import TrainingState, start_training
from pods.train import RolloutGroup, make_grouped_pods


def _is_pytree(env: Any) -> bool:
    """Whether `env` flattens into arrays (so it can be a jit argument), like `LearnedEnv`."""
    leaves = jax.tree.leaves(env)
    return not (len(leaves) == 1 and leaves[0] is env)


class HDSProgram(NamedTuple):
    """HDS's pure pieces for one config and pair of envs; the epoch is not jitted."""

    network: PolicyNetwork
    make_policy: Callable[[PolicyParams], Policy]
    epoch: Callable[..., tuple[TrainingState, dict[str, jax.Array]]]
    """`epoch(state, key, model_env=None)`: `model_env=None` uses the env given to `make_hds`;
    passing a model env (a pytree such as `LearnedEnv`, same structure) as the argument of
    the jitted epoch runs that model instead, so a refitted model reuses the compiled epoch."""


def make_hds(
    config: HDSConfig,
    sim_env: Env,
    model_env: Env | None = None,
    *,
    devices: Sequence[jax.Device] | None = None,
) -> HDSProgram:
    """Builds HDS's pure pieces for one config and pair of envs: PODS over two groups of
    rollouts (`pods.train.make_grouped_pods`), the model's and the simulator's, each sharded
    over `devices` (default: every local device; see `pods.sharding`)."""
    k = config.num_trajectories
    k_sim, k_model = config.group_sizes()
    if k_model > 0:
        if model_env is None:
            raise ValueError(
                f"HDSConfig.beta={config.beta} puts {k_model} of {k} rollouts in the model, "
                "but no model env was given"
            )
        for name in ("observation_size", "action_size"):
            if getattr(model_env, name) != getattr(sim_env, name):
                raise ValueError(
                    f"the model env's {name} is {getattr(model_env, name)}, "
                    f"the sim env's {getattr(sim_env, name)}"
                )
    # The model group takes PODS's key, so beta = 1 with the simulator as the "model" is PODS
    # again; so does the sim group at beta = 0 with the line search, so that HDS there is
    # PODS bit for bit (tests check both). Annealing's sim group takes a key of its own.
    alone = k_model == 0 and config.step_size_search == "line_search"
    groups = [
        RolloutGroup(model_env if k_model else None, k_model, name="model"),
        RolloutGroup(sim_env, k_sim, key_fold=None if alone else 1, name="sim"),
    ]
    pods = make_grouped_pods(config, groups, episode_length=sim_env.episode_length, devices=devices)
    dtype = jnp.float64 if config.float64 else jnp.float32

    def epoch(state: TrainingState, key: jax.Array, model_env: Env | None = None):
        envs = None if model_env is None else [model_env, sim_env]
        state, metrics = pods.epoch(state, key, envs)
        return state, {**metrics, "train/beta": jnp.asarray(k_model / k, dtype)}

    return HDSProgram(pods.network, pods.make_policy, epoch)


def step_counters(config: HDSConfig, sim_env: Env) -> dict[str, int]:
    """Env steps one epoch takes in each env, for `run_epochs` to report cumulatively."""
    per_trajectory = config.steps_per_trajectory(
        config.horizon or sim_env.episode_length, sim_env.episode_length
    )
    k_sim, k_model = config.group_sizes()
    return {
        "train/sim_steps": k_sim * per_trajectory,
        "train/model_steps": k_model * per_trajectory,
    }


def train(
    config: HDSConfig,
    envs: Env | tuple[Env, Env | None],
    key: jax.Array,
    *,
    progress_fn: Callable[[int, Metrics], None] | None = None,
    initial_params: PolicyParams | None = None,
    initial_state: TrainingState | None = None,
    checkpoint_fn: Callable[[TrainingState, Metrics], None] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> tuple[Callable[[PolicyParams], Policy], PolicyParams, list[Metrics]]:
    """Trains a policy with HDS; returns (make_policy, params, metrics per epoch), as PODS.

    `envs` is `(sim_env, model_env)`, or the sim env alone when beta puts no rollout in the
    model. Callbacks, warm start and exact resumption (epoch e's key is `fold_in(key, e)`)
    behave as in `pods.train.train`. Metrics are PODS's plus `train/beta` (the realized model
    fraction), `train/return_sim`, `train/return_model` (NaN for an empty group), and
    cumulative `train/sim_steps` / `train/model_steps` (env steps of each env).
    """
    sim_env, model_env = envs if isinstance(envs, tuple | list) else (envs, None)
    with jax.enable_x64(True) if config.float64 else nullcontext():
        hds = make_hds(config, sim_env, model_env, devices=devices)
        state, key_epochs = start_training(
            config,
            sim_env,
            hds.network,
            key,
            initial_state=initial_state,
            initial_params=initial_params,
        )
        # A pytree model (LearnedEnv) rides as an argument; any other env is closed over.
        model_argument = model_env if _is_pytree(model_env) else None
        history = run_epochs(
            jax.jit(hds.epoch),
            state,
            key_epochs,
            config.num_epochs,
            step_counters(config, sim_env),
            epoch_args=(model_argument,),
            progress_fn=progress_fn,
            checkpoint_fn=checkpoint_fn,
        )
        return hds.make_policy, history.state.policy_params, history.metrics


__all__ = [
    "HDSProgram",
    "make_hds",
    "step_counters",
    "train",
]
