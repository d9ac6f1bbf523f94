"""Collecting transitions: random commands (`random_actions`, white or AR(1)-correlated) and
whole episodes of an env recorded as a `TransitionDataset` (`collect_transitions`), all in one
jitted rollout.

Split from `dynamics_models.data`, which holds the dataset itself, its splits, normalization
and files.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from dynamics_models.data import TransitionDataset
from pods.action_history import sensors_of
from pods.rollout import Policy, reset_batch, trajectories_of_actions, trajectories_of_policy


def random_actions(
    key: jax.Array,
    n_trajectories: int,
    horizon: int,
    action_dim: int,
    *,
    correlation: float = 0.0,
    dtype: Any = jnp.float32,
) -> Float[Array, "n horizon act"]:
    """Random commands in [-1, 1]: i.i.d. uniform, or (correlation > 0) an AR(1) process
    a_t = c a_{t-1} + sqrt(1 - c^2) e_t with uniform marginals, which pushes the system further
    than white noise of the same size does."""
    if not 0.0 <= correlation < 1.0:
        raise ValueError(f"correlation must lie in [0, 1), got {correlation!r}")
    shape = (n_trajectories, horizon, action_dim)
    if correlation == 0.0:
        return jax.random.uniform(key, shape, dtype, -1.0, 1.0)
    noise = jax.random.normal(key, shape, dtype)

    def ar1(prev, e):
        a = correlation * prev + np.sqrt(1 - correlation**2) * e
        return a, a

    _, gauss = jax.lax.scan(ar1, noise[:, 0], jnp.swapaxes(noise[:, 1:], 0, 1))
    gauss = jnp.concatenate([noise[:, :1], jnp.swapaxes(gauss, 0, 1)], axis=1)
    # The normal CDF maps the unit-variance Gaussian process to uniform marginals on [-1, 1].
    return (2.0 * jax.scipy.stats.norm.cdf(gauss) - 1.0).astype(dtype)


def collect_transitions(
    env: Any,
    key: jax.Array,
    n_trajectories: int,
    horizon: int | None = None,
    *,
    policy: Policy | None = None,
    action_noise: float = 0.0,
    action_correlation: float = 0.0,
) -> TransitionDataset:
    """Rolls out `n_trajectories` episodes from `env.reset` and records them.

    With a `policy`, its actions plus Gaussian noise of std `action_noise`; without one,
    `random_actions` (with `action_correlation`). All trajectories run in one jitted
    `vmap` of a `lax.scan`. The observations recorded are the sensors: an env's action history
    is its commands, recorded as the actions.
    """
    horizon = int(getattr(env, "episode_length", 0)) if horizon is None else horizon
    if not (isinstance(n_trajectories, int) and n_trajectories > 0):
        raise ValueError(f"n_trajectories must be a positive integer, got {n_trajectories!r}")
    if not (isinstance(horizon, int) and horizon > 0):
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    key_reset, key_act = jax.random.split(key)
    states = reset_batch(env, key_reset, n_trajectories)
    dtype = states.obs.dtype
    if policy is None:
        actions = random_actions(
            key_act,
            n_trajectories,
            horizon,
            env.action_size,
            correlation=action_correlation,
            dtype=dtype,
        )
        trajectories = jax.jit(lambda s, a: trajectories_of_actions(env, s, a))(states, actions)
    else:
        collect = jax.jit(
            lambda s, k: trajectories_of_policy(
                env, s, policy, horizon, key=k, action_noise=action_noise
            )
        )
        trajectories = collect(states, key_act)
    physics = getattr(env, "physics", None)
    dt = getattr(env, "dt", None)
    return TransitionDataset(
        np.asarray(sensors_of(env, trajectories.observations)),
        np.asarray(trajectories.actions),
        env_name=str(getattr(env, "name", type(env).__name__)),
        physics=dataclasses.asdict(physics) if dataclasses.is_dataclass(physics) else None,
        dt=None if dt is None else float(dt),
    )


__all__ = ["collect_transitions", "random_actions"]
