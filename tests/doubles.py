"""The tests' linear test double: s' = A s + B a under the Brax `Env` contract.

One env, configured per test file: the matrices, the reward r(s', a), the initial
observation, the episode length, the dtype, and optionally a NaN planted in the action
gradient (`poison`); `LinearQuadraticEnv` is the preset whose return is exactly quadratic
in the actions. It is a pytree of (A, B), like `LearnedEnv`, so it can ride as an
argument of a jitted function (HDS's model env does); a subclass that is not registered
itself (such a preset) is an opaque env, closed over like a simulator.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from brax.envs.base import Env, State

POISONS = ("none", "positive_start", "all")


def regulator_reward(obs, action):
    """-0.5 |s'|^2 - 0.05 |a|^2."""
    return -0.5 * obs @ obs - 0.05 * action @ action


def uniform_start(rng, size, dtype):
    """An initial observation uniform in [-1, 1]^size."""
    return jax.random.uniform(rng, (size,), dtype, -1.0, 1.0)


@jax.tree_util.register_pytree_node_class
class LinearEnv(Env):
    """s' = A s + B a with reward `reward(s', a)` (also `task_reward`, for second order).

    `initial_obs(rng, observation_size, dtype)` draws s_0 (`uniform_start` by default).
    `poison="positive_start"` plants a NaN in the action gradient of every trajectory that
    starts with s_0[0] > 0, `poison="all"` in every trajectory's; the forward pass is untouched.
    """

    def __init__(
        self,
        A,
        B,
        *,
        reward: Callable = regulator_reward,
        initial_obs: Callable = uniform_start,
        episode_length: int = 5,
        dtype=jnp.float32,
        poison: str = "none",
        backend: str = "none",
    ):
        if poison not in POISONS:
            raise ValueError(f"poison must be one of {POISONS}, got {poison!r}")
        self.A, self.B = jnp.asarray(A, dtype), jnp.asarray(B, dtype)
        self.reward, self.initial_obs = reward, initial_obs
        self.episode_length, self.dtype = episode_length, dtype
        self.poison, self._backend = poison, backend

    def tree_flatten(self):
        aux = (
            self.reward,
            self.initial_obs,
            self.episode_length,
            self.dtype,
            self.poison,
            self._backend,
        )
        return (self.A, self.B), aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        env = object.__new__(cls)
        env.A, env.B = children
        env.reward, env.initial_obs, env.episode_length, env.dtype, env.poison, env._backend = aux
        return env

    def reset(self, rng):
        s0 = self.initial_obs(rng, self.observation_size, self.dtype)
        zero = jnp.zeros((), self.dtype)
        if self.poison == "none":
            return State(None, s0, zero, zero)
        poisoned = s0[0] > 0 if self.poison == "positive_start" else jnp.array(True)
        return State(None, s0, zero, zero, info={"poisoned": poisoned})

    def step(self, state, action):
        if self.poison != "none":
            action = _nan_gradient_where(action, state.info["poisoned"])
        obs = self.A @ state.obs + self.B @ action
        return state.replace(obs=obs, reward=self.task_reward(obs, action))

    def task_reward(self, obs, action):
        return self.reward(obs, action)

    def state_at(self, obs):
        """A state at observation `obs` (for k-step replays of recorded data)."""
        zero = jnp.zeros((), self.dtype)
        return State(None, obs, zero, zero)

    @property
    def observation_size(self):
        return self.A.shape[0]

    @property
    def action_size(self):
        return self.B.shape[1]

    @property
    def backend(self):
        return self._backend


@jax.custom_jvp
def _nan_gradient_where(x, poisoned):
    return x


@_nan_gradient_where.defjvp
def _nan_gradient_where_jvp(primals, tangents):
    # Linear in the tangent, so reverse mode (its transpose) gets the NaN as well.
    x, poisoned = primals
    return x, tangents[0] * jnp.where(poisoned, jnp.nan, 1.0).astype(x.dtype)


class LinearQuadraticEnv(LinearEnv):
    """s' = A s + B a with reward -0.5 s'^T Q s' - 0.5 a^T R a - q^T s': the Brax `Env`
    contract on a system whose return is exactly quadratic in the actions, so its
    Gauss-Newton matrix is its exact Hessian.

    `poison="positive_start"` plants a NaN in the action gradient of every trajectory that
    starts with s_0[0] > 0, `poison="all"` in every trajectory's; the forward pass is untouched.
    """

    def __init__(self, dtype=jnp.float32, episode_length=6, poison="none"):
        Q = jnp.array([[1.0, 0.2], [0.2, 0.5]], dtype)
        R = jnp.array([[0.1]], dtype)
        q = jnp.array([0.3, -0.1], dtype)

        def reward(obs, action):
            return -0.5 * obs @ Q @ obs - 0.5 * action @ R @ action - q @ obs

        super().__init__(
            [[1.0, 0.1], [0.0, 1.0]],
            [[0.0], [0.1]],
            reward=reward,
            episode_length=episode_length,
            dtype=dtype,
            poison=poison,
        )
