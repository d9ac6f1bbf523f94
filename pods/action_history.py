"""An action history in the observation: a policy that sees its own last m commands.

A system with actuator latency is not Markov in its sensors alone: the commands still in
flight decide what happens next. Observing them restores the Markov property (Katsikopoulos &
Engelbrecht 2003), and the controller knows them without a sensor. An env with an action
history m observes

    obs_t = [sensors_t..., u_{t-1}, u_{t-2}, ..., u_{t-m}]

the sensors first (the layout an env without history has), then the commands, the newest
first, each `action_size` entries, as they were commanded (before any gain or saturation),
zeros before the episode's first command. The history is a pure function of the commands,
so it is carried in the observation itself and stays differentiable in them.

Envs say how much of their observation the sensors are by `sensor_size` and how long their
history is by `action_history`; an env without those attributes has no history. Everything
that models or records the physics (datasets, learned models, system identification) works on
the sensors alone: the history is the commands, which a dataset stores anyway.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jaxtyping import Array, Float

from pods.validation import is_integer


def check_action_history(value: Any) -> int:
    """`value` if it is a valid history length (an integer >= 0), else one ValueError line."""
    if not is_integer(value, 0):
        raise ValueError(f"action_history must be an integer >= 0, got {value!r}")
    return value


def action_history(env: Any) -> int:
    """The number of past commands `env` observes (0 for an env that does not say)."""
    return int(getattr(env, "action_history", 0))


def sensor_size(env: Any) -> int:
    """How many leading entries of `env`'s observation its sensors read."""
    return int(getattr(env, "sensor_size", env.observation_size))


def sensors_of(env: Any, obs: Float[Array, "... obs"]) -> Float[Array, "... sensors"]:
    """The sensor part of observations of `env` (the whole observation without a history)."""
    return obs[..., : sensor_size(env)]


def push_command(
    history: Float[Array, " history"], action: Float[Array, " act"], *, xp: Any = jnp
) -> Float[Array, " history"]:
    """The history after `action` was commanded: it enters first, the oldest command leaves.
    An empty history stays empty."""
    if history.shape[-1] == 0:
        return history
    return xp.concatenate([action, history[: history.shape[-1] - action.shape[-1]]])


def with_history(
    sensors: Float[Array, " sensors"], history: Float[Array, " history"], *, xp: Any = jnp
) -> Float[Array, " obs"]:
    """The observation of `sensors` and `history`: the sensors alone when there is none, so an
    env without a history observes exactly what it did before histories existed."""
    if history.shape[-1] == 0:
        return sensors
    return xp.concatenate([sensors, history.astype(sensors.dtype)])


__all__ = [
    "action_history",
    "check_action_history",
    "push_command",
    "sensor_size",
    "sensors_of",
    "with_history",
]
