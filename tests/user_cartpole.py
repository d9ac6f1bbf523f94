"""A user's own gymnasium env, as a researcher would write it in a module of their own: a
cart-pole (the classic equations of Barto, Sutton and Anderson, 1983, with a continuous force)
that the project knows nothing of until the command line names it. Importing this module
registers two ids:

    UserCartPole-v0       already in the testbeds' layout: [x, cos theta, sin theta, xdot,
                          thetadot] (theta 0 upright), a command in [-1, 1] for 10 N;
                          reached as `real.gym_id=user_cartpole:UserCartPole-v0`
    UserCartPoleAngles-v0 its own layout: [x, theta, xdot, thetadot], a force in N in
                          [-10, 10]; reached through `ADAPTER`, as
                          `real.gym_id=UserCartPoleAngles-v0 real.gym_adapter=user_cartpole:ADAPTER`

`tests/` is on the path of the processes that name it (PYTHONPATH), as a user's own package
would be.
"""

from __future__ import annotations

import gymnasium
import numpy as np

from sim2real.gym_adapter import GymAdapter
from sim2real.testbed_spec import RewardWeights, task_reward

GRAVITY, CART_MASS, POLE_MASS, HALF_LENGTH, MAX_FORCE, DT = 9.81, 1.0, 0.1, 0.5, 10.0, 0.025


class UserCartPole(gymnasium.Env):
    """One pole on a cart, semi-implicit Euler at `DT`; episodes end at `episode_length`."""

    metadata = {"render_modes": []}

    def __init__(self, layout: str = "testbed", episode_length: int = 100):
        if layout not in ("testbed", "angles"):
            raise ValueError(f"layout must be 'testbed' or 'angles', got {layout!r}")
        self.layout, self.episode_length, self.dt = layout, episode_length, DT
        size = 5 if layout == "testbed" else 4
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (size,), np.float64)
        limit = 1.0 if layout == "testbed" else MAX_FORCE
        self.action_space = gymnasium.spaces.Box(-limit, limit, (1,), np.float32)
        self.state, self.steps = np.zeros(4), 0

    def _observation(self) -> np.ndarray:
        x, theta, x_dot, theta_dot = self.state
        if self.layout == "angles":
            return self.state.copy()
        return np.array([x, np.cos(theta), np.sin(theta), x_dot, theta_dot])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.state = self.np_random.uniform(-0.05, 0.05, 4)
        self.steps = 0
        return self._observation(), {}

    def step(self, action):
        space = self.action_space
        force = float(np.clip(np.asarray(action).reshape(-1)[0], space.low[0], space.high[0]))
        if self.layout == "testbed":
            force *= MAX_FORCE
        x, theta, x_dot, theta_dot = self.state
        total = CART_MASS + POLE_MASS
        cos, sin = np.cos(theta), np.sin(theta)
        temp = (force + POLE_MASS * HALF_LENGTH * theta_dot**2 * sin) / total
        theta_acc = (GRAVITY * sin - cos * temp) / (
            HALF_LENGTH * (4.0 / 3.0 - POLE_MASS * cos**2 / total)
        )
        x_acc = temp - POLE_MASS * HALF_LENGTH * theta_acc * cos / total
        x_dot, theta_dot = x_dot + DT * x_acc, theta_dot + DT * theta_acc
        self.state = np.array([x + DT * x_dot, theta + DT * theta_dot, x_dot, theta_dot])
        self.steps += 1
        reward = float(np.cos(self.state[1]))  # the env's own: the pole's height
        return self._observation(), reward, False, self.steps >= self.episode_length, {}


ADAPTER = GymAdapter(
    observation=lambda o: np.array([o[0], np.cos(o[1]), np.sin(o[1]), o[2], o[3]]),
    action=lambda u: MAX_FORCE * np.clip(u, -1.0, 1.0),
    # The project's task reward in place of the env's own, so returns compare with sim's.
    reward=lambda obs, u, _: float(task_reward(obs, u, 1, RewardWeights(), xp=np)),
    observation_size=5,
)
"""`UserCartPoleAngles-v0` in the testbeds' layout, scored by the project's reward."""

for _id, _layout in (("UserCartPole-v0", "testbed"), ("UserCartPoleAngles-v0", "angles")):
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point=UserCartPole, kwargs={"layout": _layout})
