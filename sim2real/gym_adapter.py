"""How a gymnasium env's observations and actions map to a testbed's layout (`GymAdapter`),
and the checks that they do (`gym_sensor_size`, `check_gym_layout`): one ValueError line
naming both shapes and what to give the adapter, before any transition is taken.

Split from `sim2real.real_system`, the budgeted boundary that steps the env through the
adapter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np


def _identity(x: np.ndarray) -> np.ndarray:
    return x


@dataclasses.dataclass(frozen=True)
class GymAdapter:
    """How a gymnasium env's observations and actions map to a testbed's layout.

    The defaults are the identity, for an env that already speaks the testbed's layout (the
    MuJoCo C cart-poles). For another env give the maps, e.g. for gymnasium's
    `InvertedPendulum-v5` (observation [x, theta, xdot, thetadot], force in [-3, 3]):

        GymAdapter(
            observation=lambda o: np.array([o[0], np.cos(o[1]), np.sin(o[1]), o[2], o[3]]),
            action=lambda u: 3.0 * u,
            observation_size=5,
        )
    """

    observation: Callable[[np.ndarray], np.ndarray] = _identity
    """The env's observation -> the testbed's observation."""
    action: Callable[[np.ndarray], np.ndarray] = _identity
    """The testbed's command (in [-1, 1], beyond it saturating) -> the env's action."""
    reward: Callable[[np.ndarray, np.ndarray, float], float] | None = None
    """(testbed observation after the step, command, the env's reward) -> the reward
    recorded; None records the env's own."""
    observation_size: int | None = None
    """The testbed layout's sensor size (the observation without an action history, which
    the boundary appends); None: the env's observation space's."""
    action_size: int = 1
    """The testbed's command size."""


def _shape(shape: Any) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def gym_sensor_size(env: gymnasium.Env, adapter: GymAdapter) -> int:
    """The sensor size `env` gives through `adapter` (`adapter.observation_size`, else the
    size of its adapted observation); one ValueError line if an observation does not map
    to it, or the zero command maps outside the env's action space."""
    size = _adapted_sensor_size(env, adapter)
    _check_command(env, adapter)
    return size


def _adapted_sensor_size(env: gymnasium.Env, adapter: GymAdapter) -> int:
    space = env.observation_space
    try:
        mapped = adapter.observation(np.asarray(space.sample()))
        sample = np.asarray(mapped, np.float64)
    except Exception as err:
        raise ValueError(
            f"GymAdapter.observation fails on the env's observation of shape "
            f"{_shape(space.shape or ())} ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from None
    size = adapter.observation_size
    if size is None:
        size = int(np.prod(sample.shape))
    if sample.shape != (size,):
        raise ValueError(
            f"the gymnasium env's observations map to shape {_shape(sample.shape)}, the testbed "
            f"layout's sensors are ({size},): give GymAdapter.observation / observation_size"
        )
    return size


def _check_command(env: gymnasium.Env, adapter: GymAdapter) -> None:
    command = np.zeros(adapter.action_size)
    try:
        action = np.asarray(adapter.action(command), dtype=env.action_space.dtype)
    except Exception as err:
        raise ValueError(
            f"GymAdapter.action fails on the zero command of shape ({adapter.action_size},) "
            f"({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from None
    wanted = env.action_space.shape
    if wanted is not None and action.size != int(np.prod(wanted)):
        raise ValueError(
            f"the command of shape ({adapter.action_size},) maps to an action of shape "
            f"{_shape(action.shape)}, the gymnasium env's action space {env.action_space} "
            "takes " + _shape(wanted) + ": give GymAdapter.action (and action_size)"
        )
    if not env.action_space.contains(action.reshape(action.shape if wanted is None else wanted)):
        raise ValueError(
            f"the zero command maps to {action!r}, outside the gymnasium env's action space "
            f"{env.action_space}: give GymAdapter.action"
        )


def check_gym_layout(
    env: gymnasium.Env, adapter: GymAdapter, sensor_size: int, action_size: int
) -> None:
    """One ValueError line, naming both shapes and what to give the adapter, unless `env`
    through `adapter` speaks the layout of a testbed with `sensor_size` sensors and
    `action_size` commands: what a run checks before any compute."""
    size = _adapted_sensor_size(env, adapter)
    if size != sensor_size:
        raw = _shape(env.observation_space.shape or ())
        raise ValueError(
            f"the gymnasium env's observations {raw} map to ({size},) sensors, the testbed "
            f"layout's are ({sensor_size},): give the adapter an `observation` that maps "
            f"{raw} to ({sensor_size},) (GymAdapter.observation, observation_size)"
        )
    if adapter.action_size != action_size:
        raise ValueError(
            f"the adapter's commands are ({adapter.action_size},), the testbed's ({action_size},): "
            f"give GymAdapter.action_size={action_size} and an `action` that maps them to the "
            f"env's action space {env.action_space}"
        )
    _check_command(env, adapter)


__all__ = ["GymAdapter", "check_gym_layout", "gym_sensor_size"]
