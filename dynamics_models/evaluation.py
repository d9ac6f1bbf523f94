"""k-step prediction error: open-loop replay of held-out real action sequences.

From every window start t of a held-out real trajectory, the model (or a simulator) is placed
at the real observation s_t and fed the real actions a_t .. a_{t+K-1}, never corrected by the
real states in between; the error after k steps is measured in state coordinates (angles
wrapped) for k = 1..K. This is the error an optimizer rolling out K steps through the model
sees. Replays run through `pods.rollout.trajectory_of_actions`, the code PODS uses.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from brax.envs.base import State

from dynamics_models.data import ObsLayout, TransitionDataset
from dynamics_models.learned_env import LearnedEnv
from pods.action_history import sensor_size, sensors_of
from pods.rollout import trajectory_of_actions


@dataclasses.dataclass(frozen=True)
class KStepError:
    """RMSE of open-loop predictions k = 1..K steps ahead."""

    rmse: np.ndarray
    """[K, state_dim]: per state coordinate ([x, angles..., velocities...] for the testbeds)."""
    n_windows: int
    """How many (trajectory, start) windows were replayed."""

    @property
    def total(self) -> np.ndarray:
        """[K]: sqrt of the mean over state coordinates of the squared error."""
        return np.sqrt(np.mean(self.rmse**2, axis=-1))

    def at(self, k: int) -> float:
        """Total RMSE after k steps."""
        if not 1 <= k <= self.rmse.shape[0]:
            raise ValueError(f"k must lie in [1, {self.rmse.shape[0]}], got {k!r}")
        return float(self.total[k - 1])

    def to_json(self, ks: tuple[int, ...] | None = None) -> dict:
        ks = ks or tuple(range(1, self.rmse.shape[0] + 1))
        return {
            "k": list(ks),
            "rmse": [self.at(k) for k in ks],
            "rmse_per_state": [self.rmse[k - 1].tolist() for k in ks],
            "n_windows": self.n_windows,
        }


def state_at(env: Any, obs: jax.Array) -> State:
    """An env state at a given observation: a learned env's directly, a testbed's through
    `state_from_obs` and `pipeline_init`. Given the sensors alone (a dataset's observation),
    the action history of an env that observes one starts empty (zeros): an open-loop replay
    does not read it."""
    missing = int(env.observation_size) - obs.shape[-1]
    if missing > 0 and obs.shape[-1] == sensor_size(env):
        obs = jnp.concatenate([obs, jnp.zeros((*obs.shape[:-1], missing), obs.dtype)], axis=-1)
    if hasattr(env, "state_at"):
        return env.state_at(obs)
    if hasattr(env, "state_from_obs") and hasattr(env, "pipeline_init"):
        q, qd = env.state_from_obs(obs)
        zero = jnp.zeros((), obs.dtype)
        return State(env.pipeline_init(q, qd), obs, zero, zero)
    raise ValueError(f"cannot place a {type(env).__name__} at an observation")


def _as_env(stepper: Any) -> Any:
    return stepper if hasattr(stepper, "step") else LearnedEnv(stepper)


@eqx.filter_jit
def _replay(stepper: Any, obs0: jax.Array, actions: jax.Array) -> jax.Array:
    # A model enters as a traced argument (not a closure) so that one compilation serves
    # every trained model of the same structure.
    env = _as_env(stepper)
    states = jax.vmap(lambda o: state_at(env, o))(obs0)
    trajectories = jax.vmap(lambda s, a: trajectory_of_actions(env, s, a))(states, actions)
    return sensors_of(env, trajectories.observations[:, 1:])


def k_step_error(
    stepper: Any,
    data: TransitionDataset,
    max_k: int,
    *,
    start_stride: int = 1,
    layout: ObsLayout | None = None,
) -> KStepError:
    """Open-loop k-step RMSE of `stepper` (a trained model or a Brax env such as the `sim`
    testbed) on the real trajectories of `data`, for k = 1..max_k, from every
    `start_stride`-th start.

    Errors are measured in `layout`'s state coordinates, by default the stepper's own (a
    model's `layout`, else the testbed's). To compare models that predict in different
    coordinates, pass the testbed's layout (`ObsLayout.of_env(testbed)`) to all of them.
    """
    if not (isinstance(max_k, int) and 1 <= max_k <= data.horizon):
        raise ValueError(f"max_k must be an integer in [1, {data.horizon}], got {max_k!r}")
    if not (isinstance(start_stride, int) and start_stride > 0):
        raise ValueError(f"start_stride must be a positive integer, got {start_stride!r}")
    env = _as_env(stepper)
    if sensor_size(env) != data.obs_dim or int(env.action_size) != data.action_dim:
        raise ValueError(
            f"{type(stepper).__name__} has (obs_dim, action_dim) "
            f"{(sensor_size(env), int(env.action_size))}, the data has "
            f"{(data.obs_dim, data.action_dim)}"
        )
    layout = layout or getattr(stepper, "layout", None) or ObsLayout.of_env(env)
    obs0, actions, targets = data.windows(max_k)
    n_starts = data.horizon - max_k + 1
    keep = (np.arange(obs0.shape[0]) % n_starts) % start_stride == 0
    dtype = env.dtype
    predicted = _replay(stepper, jnp.asarray(obs0[keep], dtype), jnp.asarray(actions[keep], dtype))
    error = layout.difference(
        layout.to_state(predicted), layout.to_state(jnp.asarray(targets[keep], dtype))
    )
    rmse = np.sqrt(np.mean(np.asarray(error, np.float64) ** 2, axis=0))
    return KStepError(rmse, int(keep.sum()))
