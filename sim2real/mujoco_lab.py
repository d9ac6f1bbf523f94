"""The testbeds in MuJoCo C, as gymnasium envs: a second engine for a policy trained in Brax.

`MujocoCartPole` steps the same MJCF body with the same `Physics` and `LabEffects` as the Brax
twin (`sim2real.testbeds.CartPole`), in the twin's order, with the laws of `sim2real.lab`
written once for both engines: the latency queue, the motor lag, the passive forces at every
integration stage, the integrator (semi-implicit Euler or RK4), the body mismatch, the
encoders and the velocity noise. The one thing it does not share is what computes the joint
accelerations: MuJoCo C (`mujoco.mj_forward` with the generalized forces in `qfrc_applied`)
where the twin uses Brax's generalized pipeline (Euler) or the closed-form chain (RK4). So
the two engines agree to rounding at the same step and integrator, and a policy that only
works in the twin shows it here, as labs check sim2sim before hardware.

Importing this module registers every testbed with gymnasium as
`sim2real/{system}_{task}_{variant}-v0`:

    import gymnasium, sim2real.mujoco_lab

    env = gymnasium.make("sim2real/cartpole_swingup_lab-v0")
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

`import sim2real` alone does not import gymnasium.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import gymnasium
import mujoco
import numpy as np

from sim2real import lab as lab_physics
from sim2real.chain_body import apply_body_mismatch
from sim2real.lab import LabEffects
from sim2real.testbed_spec import (
    InitialStateNoise,
    Physics,
    RewardWeights,
    list_testbeds,
    load_mj_model,
    parse_testbed_name,
    resolve_testbed,
    task_reward,
)

_MOTOR = "motor"


def gymnasium_id(testbed: str) -> str:
    """The gymnasium id of a testbed name: `cartpole_swingup_lab` ->
    `sim2real/cartpole_swingup_lab-v0`."""
    parse_testbed_name(testbed)
    return f"sim2real/{testbed}-v0"


class MujocoCartPole(gymnasium.Env):
    """A testbed (system x task x variant) stepped by MuJoCo C; the arguments mean what they
    mean for `sim2real.testbeds.CartPole` (`sim2real.testbed_spec.resolve_testbed` applies their
    rules for both).

    Observation: `[x, cos th_i, sin th_i ..., xdot, th_i dot ...]`, what the lab's encoders
    read for the `lab` variant, the true state otherwise: the sensors alone, since a rig has no
    sensor for its commands (a policy that observes an action history gets it from
    `sim2real.real_system.RealSystem`, which appends the commands it sent). Action: one motor
    command; beyond [-1, 1] it saturates as in the twin (the gain first, then the motor's
    control range).
    The reward is the task's on the true state. `info` holds the true `qpos` and `qvel` and
    the command driving the motor now (`motor`: after the gain, latency and lag, before the
    motor's range clips it). An episode truncates after `episode_length` steps; it never
    terminates.

    `reset(options={"qpos": q, "qvel": qd})` starts at that state instead of a random one
    (to pair a run with the twin's).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        system: str = "cartpole",
        task: str = "swingup",
        variant: str = "lab",
        *,
        physics: Physics | None = None,
        lab: LabEffects | None = None,
        reward_weights: RewardWeights = RewardWeights(),
        initial_noise: InitialStateNoise = InitialStateNoise(),
        episode_length: int = 100,
        timestep: float | None = None,
        n_frames: int | None = None,
    ):
        spec = resolve_testbed(
            system,
            task,
            variant,
            physics=physics,
            lab=lab,
            episode_length=episode_length,
            timestep=timestep,
            n_frames=n_frames,
        )
        self.system_name, self.task, self.variant = system, task, variant
        self.physics, self.lab = spec.physics, spec.lab
        self.reward_weights, self.initial_noise = reward_weights, initial_noise
        self.episode_length, self.n_poles = episode_length, spec.n_poles
        self.timestep, self.n_frames = float(spec.timestep), spec.n_frames

        lab = spec.lab
        model = load_mj_model(system)
        if lab is not None and lab.body_mismatch:
            model = apply_body_mismatch(model, lab)
        model.opt.timestep = self.timestep
        self.model = model
        self._data = mujoco.MjData(model)
        motor = model.actuator(_MOTOR).id
        if not model.actuator_ctrllimited[motor]:
            raise ValueError(f"the {system!r} motor has no control range to saturate at")
        self._gear = float(model.actuator_gear[motor, 0])
        self._ctrl_low, self._ctrl_high = (float(c) for c in model.actuator_ctrlrange[motor])
        # Views into MjData, taken once: MjData's attributes build a new array on every access.
        self._qpos, self._qvel, self._qacc = self._data.qpos, self._data.qvel, self._data.qacc
        self._qfrc = self._data.qfrc_applied
        self._qfrc_hinges = self._qfrc[1:]

        self._physics_values = dataclasses.asdict(self.physics)
        self._gain = self.physics.actuator_gain
        if lab is None:
            self._buffer, self._offsets = 0, [0] * self.n_frames
            self._decay, self._integrator = None, lab_physics.euler_step
        else:
            self._buffer = lab.command_buffer_length(self.n_frames)
            self._offsets = [int(j) for j in lab.command_offsets(self.n_frames)]
            self._decay = lab.motor_decay(self.timestep) if lab.motor_time_constant else None
            self._integrator = {"euler": lab_physics.euler_step, "rk4": lab_physics.rk4_step}[
                lab.integrator
            ]
        noisy = lab is not None and lab.sensor_noise
        self._noise_scale = (
            np.array([lab.linear_velocity_noise] + [lab.angular_velocity_noise] * self.n_poles)
            if noisy
            else None
        )

        self.observation_space = gymnasium.spaces.Box(
            -np.inf, np.inf, (self.observation_size,), np.float64
        )
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (self.action_size,))
        self._q: np.ndarray | None = None
        self._qd: np.ndarray | None = None
        self._commands: list[float] = []
        self._motor = 0.0
        self._drive = 0.0
        self._steps = 0

    # --- what the Brax env also has --------------------------------------------------------

    @property
    def name(self) -> str:
        return f"{self.system_name}_{self.task}_{self.variant}"

    @property
    def dt(self) -> float:
        """s, one control period: `n_frames` physics steps."""
        return self.timestep * self.n_frames

    @property
    def observation_size(self) -> int:
        return 1 + 2 * self.n_poles + 1 + self.n_poles

    @property
    def action_size(self) -> int:
        return 1

    # --- gymnasium ---------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if options:
            q, qd = self._state_of(options)
        else:
            q, qd = self._random_state()
        self._q, self._qd = q, qd
        self._commands = [0.0] * self._buffer
        self._motor = 0.0
        self._steps = 0
        return self.sense(q, qd), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._q is None:
            raise gymnasium.error.ResetNeeded("MujocoCartPole.step before reset")
        action = self._command(action)
        # The twin's order: the gain scales the command before the motor saturates it; the
        # command joins the latency's queue; each physics step takes the one sent d steps
        # before, through the lag.
        queue = self._commands + [self._gain * float(action[0])]
        q, qd, motor, decay = self._q, self._qd, self._motor, self._decay
        for offset in self._offsets:
            delayed = queue[offset]
            if decay is None:
                motor = delayed
            else:
                # The lag's exact solution for a command held over the step.
                target = min(max(delayed, -1.0), 1.0)
                motor = target + decay * (motor - target)
            self._drive = motor
            q, qd = self._integrator(self._acceleration, q, qd, self.timestep)
        self._q, self._qd, self._motor = q, qd, motor
        self._commands = queue[1:]
        self._steps += 1
        reward = task_reward(self.observe(q, qd), action, self.n_poles, self.reward_weights, xp=np)
        truncated = self._steps >= self.episode_length
        return self.sense(q, qd), float(reward), False, truncated, self._info()

    # --- the rig -----------------------------------------------------------------------------

    def _acceleration(self, q: np.ndarray, qd: np.ndarray) -> np.ndarray:
        """qdd from MuJoCo C under the motor's force and the passive forces at (q, qd)."""
        self._qpos[:] = q
        self._qvel[:] = qd
        motor = min(max(self._drive, self._ctrl_low), self._ctrl_high)
        # The slider's law on plain floats (`math` as the array module): a third of what
        # numpy's scalar functions cost, at every stage of every physics step.
        slider = lab_physics.slider_force(
            self._physics_values, self.lab, q.item(0), qd.item(0), xp=math
        )
        self._qfrc[0] = self._gear * motor + slider
        self._qfrc_hinges[:] = lab_physics.hinge_torques(self._physics_values, qd[1:])
        mujoco.mj_forward(self.model, self._data)
        # A copy: the next stage's mj_forward overwrites qacc, and RK4 keeps every stage's.
        return self._qacc.copy()

    def sense(self, q: np.ndarray, qd: np.ndarray) -> np.ndarray:
        """The observation of (q, qd): for the `lab` variant what its encoders and velocity
        estimates read (positions quantized, velocities with Gaussian noise drawn from
        `np_random`), else the state itself."""
        lab = self.lab
        if lab is None:
            return self.observe(q, qd)
        q = np.concatenate(
            [
                lab_physics.quantize(q[:1], lab.position_resolution, xp=np),
                lab_physics.quantize(q[1:], lab.angle_resolution, xp=np),
            ]
        )
        if self._noise_scale is not None:
            qd = qd + self._noise_scale * self.np_random.standard_normal(qd.shape)
        return self.observe(q, qd)

    def observe(self, q: np.ndarray, qd: np.ndarray) -> np.ndarray:
        """The testbeds' observation layout of a state."""
        angles = q[1:]
        return np.concatenate([q[:1], np.stack([np.cos(angles), np.sin(angles)], -1).ravel(), qd])

    def _info(self) -> dict[str, Any]:
        return {"qpos": self._q.copy(), "qvel": self._qd.copy(), "motor": self._motor}

    def _random_state(self) -> tuple[np.ndarray, np.ndarray]:
        """The testbeds' initial-state distribution: uniform noise around the nominal start,
        the first hinge at pi for the swing-up (the others in line with it)."""
        noise, rng, n = self.initial_noise, self.np_random, self.n_poles
        x = rng.uniform(-noise.cart_position, noise.cart_position, 1)
        angles = rng.uniform(-noise.angle, noise.angle, n)
        if self.task == "swingup":
            angles[0] += math.pi
        qd = rng.uniform(-noise.velocity, noise.velocity, 1 + n)
        return np.concatenate([x, angles]), qd

    def _state_of(self, options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        if set(options) != {"qpos", "qvel"}:
            raise ValueError(
                f"MujocoCartPole.reset options take both 'qpos' and 'qvel', got {sorted(options)}"
            )
        state = []
        for key in ("qpos", "qvel"):
            value = np.array(options[key], dtype=np.float64)
            if value.shape != (1 + self.n_poles,) or not np.all(np.isfinite(value)):
                raise ValueError(
                    f"reset option {key!r} must be {1 + self.n_poles} finite numbers, "
                    f"got {options[key]!r}"
                )
            state.append(value)
        return state[0], state[1]

    def _command(self, action: Any) -> np.ndarray:
        try:
            command = np.array(action, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"MujocoCartPole action must be a number, got {action!r}") from None
        if command.shape != (1,) or not math.isfinite(command[0]):
            raise ValueError(f"MujocoCartPole action must be one finite command, got {action!r}")
        return command


def make_mujoco_testbed(name: str, **kwargs) -> MujocoCartPole:
    """The testbed registered as `name`, in MuJoCo C, with constructor overrides."""
    system, task, variant = parse_testbed_name(name)
    return MujocoCartPole(system, task, variant, **kwargs)


class MujocoTrajectory(NamedTuple):
    """One open-loop run in MuJoCo C, as host arrays; the leading axis is time."""

    qpos: np.ndarray
    """[horizon + 1, nq]: the true joint positions, from the start."""
    qvel: np.ndarray
    """[horizon + 1, nv]: the true joint velocities."""
    observations: np.ndarray
    """[horizon + 1, obs_dim]: what the policy would have seen."""
    rewards: np.ndarray
    """[horizon]."""


def trajectory_of_actions(
    env: MujocoCartPole, qpos: Any, qvel: Any, actions: Any, *, seed: int | None = None
) -> MujocoTrajectory:
    """Plays `actions` ([horizon, 1]) open loop from the state (`qpos`, `qvel`)."""
    obs, info = env.reset(seed=seed, options={"qpos": qpos, "qvel": qvel})
    qs, qds, observations, rewards = [info["qpos"]], [info["qvel"]], [obs], []
    for action in np.asarray(actions, dtype=np.float64):
        obs, reward, _, _, info = env.step(action)
        qs.append(info["qpos"])
        qds.append(info["qvel"])
        observations.append(obs)
        rewards.append(reward)
    return MujocoTrajectory(np.stack(qs), np.stack(qds), np.stack(observations), np.array(rewards))


def register_testbeds() -> None:
    """Registers every testbed with gymnasium (see `gymnasium_id`); the env truncates its own
    episodes, so gymnasium adds no TimeLimit that could disagree with `episode_length`."""
    for name in list_testbeds():
        system, task, variant = parse_testbed_name(name)
        env_id = gymnasium_id(name)
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id,
                entry_point="sim2real.mujoco_lab:MujocoCartPole",
                kwargs={"system": system, "task": task, "variant": variant},
            )


register_testbeds()

__all__ = [
    "MujocoCartPole",
    "MujocoTrajectory",
    "gymnasium_id",
    "make_mujoco_testbed",
    "register_testbeds",
    "trajectory_of_actions",
]
