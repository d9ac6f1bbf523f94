"""A trained dynamics model as a Brax-style env, so PODS rolls out and differentiates through
it exactly as through the simulator (`pods.rollout` takes either)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from brax.envs.base import Env, State
from jaxtyping import Array, Float

from pods.action_history import action_history, push_command, sensor_size, with_history


@jax.tree_util.register_pytree_node_class
class LearnedEnv(Env):
    """Steps `model` (obs, action) -> next obs; resets and rewards come from a testbed.

    The reset draws the testbed's initial observation (no simulation happens; the pipeline
    state is None) and the reward is the testbed's `task_reward(next_obs, action)`, the same
    pure function the testbed's own `step` uses, evaluated on the predicted observation.
    Without a testbed the env can still be placed at an observation (`state_at`) and rolled
    out, with zero reward: that is how `k_step_error` replays real actions through a model.

    The model predicts the sensors. A testbed whose policy observes an action history
    (`pods.action_history`) gives the env that history too: the model sees the sensor part of
    the observation and the action, and the history is shifted exactly, the action entering
    first, as the testbed shifts it.

    With `sample_member`, an ensemble steps each episode with one of its members, drawn at
    the episode's reset and kept in `state.info["member"]`, rather than with the members'
    mean: the rollouts then see the spread of models the data allows (as in PETS or MBPO),
    not one averaged model. A state placed with `state_at` uses the mean.

    The env is a pytree whose leaves are the model's arrays (the testbed and the model's
    static fields are its structure). Passed to a jitted function as an argument rather than
    closed over, a refitted model of the same architecture reuses the compiled code, which
    matters when HDS refits the model every few epochs.
    """

    def __init__(
        self,
        model: Any,
        testbed: Any = None,
        *,
        episode_length: int | None = None,
        sample_member: bool = False,
    ):
        if sample_member and not hasattr(model, "n_members"):
            raise ValueError(
                f"sample_member needs an ensemble; got a {type(model).__name__}, which has no "
                "members to draw from"
            )
        self.model = model
        self.testbed = testbed
        self.sample_member = sample_member
        if testbed is not None and sensor_size(testbed) != model.layout.obs_dim:
            raise ValueError(
                f"model predicts obs_dim {model.layout.obs_dim} but testbed {testbed.name!r} "
                f"senses {sensor_size(testbed)}"
            )
        self.episode_length = episode_length or getattr(testbed, "episode_length", None)
        self.action_history = action_history(testbed)

    def tree_flatten(self):
        # Only arrays are leaves; the rest of the model (activation functions, static fields)
        # goes into the structure, so `jax.jit` accepts the env as an argument.
        arrays, rest = eqx.partition(self.model, eqx.is_array)
        aux = (rest, self.testbed, self.episode_length, self.sample_member, self.action_history)
        return (arrays,), aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        rest, testbed, episode_length, sample_member, history = aux
        env = object.__new__(cls)
        env.model = eqx.combine(children[0], rest)
        env.testbed, env.episode_length, env.sample_member = testbed, episode_length, sample_member
        env.action_history = history
        return env

    @property
    def name(self) -> str:
        return f"learned_{getattr(self.testbed, 'name', 'model')}"

    @property
    def dtype(self):
        return self.model.dtype

    @property
    def dt(self):
        """The testbed's control period (the model steps at the rate its data was recorded)."""
        return getattr(self.testbed, "dt", None)

    @property
    def sensor_size(self) -> int:
        """The observation's leading entries the model predicts."""
        return self.model.layout.obs_dim

    @property
    def observation_size(self) -> int:
        return self.sensor_size + self.action_history * self.action_size

    @property
    def action_size(self) -> int:
        return int(self.model.normalizer.action_mean.shape[-1])

    @property
    def backend(self) -> str:
        return "learned"

    def state_at(self, obs: Float[Array, " obs"]) -> State:
        """An env state at observation `obs` (the sensors, then the history if there is one)."""
        zero = jnp.zeros((), self.dtype)
        return State(pipeline_state=None, obs=jnp.asarray(obs, self.dtype), reward=zero, done=zero)

    def reset(self, rng: jax.Array) -> State:
        if self.testbed is None:
            raise ValueError("LearnedEnv.reset needs a testbed to draw initial states from")
        state = self.state_at(self.testbed.reset(rng).obs)
        if self.sample_member:
            # A key of its own: the initial state is the one the mean model would start from.
            member = jax.random.randint(jax.random.fold_in(rng, 1), (), 0, self.model.n_members)
            state = state.replace(info={"member": member})
        return state

    def step(self, state: State, action: Float[Array, " act"]) -> State:
        member = state.info.get("member") if self.sample_member else None
        model = self.model if member is None else self.model.member(member)
        sensors = model(state.obs[: self.sensor_size], action)
        history = push_command(state.obs[self.sensor_size :], action.astype(sensors.dtype))
        obs = with_history(sensors, history)
        return state.replace(obs=obs, reward=self.task_reward(sensors, action))

    def task_reward(self, obs: Float[Array, " obs"], action: Float[Array, " act"]) -> Array:
        """The testbed's reward for arriving at `obs` (the sensors, or a whole observation) by
        `action` (zero without a testbed); PODS's second-order step differentiates it."""
        if self.testbed is None:
            return jnp.zeros((), obs.dtype)
        return self.testbed.task_reward(obs, action)
