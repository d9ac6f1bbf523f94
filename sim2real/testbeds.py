"""Cart-pole testbeds in a `sim`, a `real` and a `lab` variant, as Brax `PipelineEnv`s.

The body (masses, lengths, motor) lives in the MJCF assets beside this file. What makes the
`real` system (the "friction" profile) real is `Physics`: viscous damping on the slider and
the hinges, a smooth Coulomb-like friction on the slider, and an actuator that delivers only a
fraction of the commanded force. `sim` is the same body with all of that switched off. The
`real` profile lies inside the simulator's own parameter family, so system identification
recovers it exactly: it is the control. The `lab` variant (the "lab" profile) is `Physics`
plus `sim2real.lab.LabEffects`, what a physical rig has beyond that family: actuator latency
and lag, stiction, a cable and cogging, a body off its nominal, encoder quantization and
velocity noise, and near-continuous time (RK4 at 5 ms). It is the differentiable twin of the
lab rig; `sim2real.mujoco_lab` runs the same rig in MuJoCo C.

The step reads those five numbers from the Brax `System` (`physics_from_sys`), not from Python
floats, so that they are ordinary leaves of `env.sys`: Brax's domain randomization (which swaps
`env.sys` under `vmap`) can vary them per environment, and system identification can
differentiate a rollout with respect to them (`CartPole.with_physics_values`).

Every task x variant is registered with Brax under a stable name, `{system}_{task}_{variant}`
(`cartpole_balance_sim`, `double_cartpole_swingup_real`, ...), so
`brax.envs.get_environment(name)` and Brax's own trainers work on them.

What a testbed is apart from this env (the systems, tasks and variants, `Physics` and its slot
in the `System`, the `System` itself, the task reward, the names) is `sim2real.testbed_spec`,
which the MuJoCo C engine shares.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from brax import actuator, envs
from brax.envs.base import PipelineEnv, State
from flax import struct
from jaxtyping import Array, Float

import sim2real.lab as lab_physics
from pods.action_history import check_action_history, push_command, with_history
from sim2real.chain_body import ChainBody
from sim2real.lab import FrictionGradient, LabEffects
from sim2real.testbed_spec import (
    CartPoleSpec,
    InitialStateNoise,
    Physics,
    PhysicsValues,
    RewardWeights,
    brax_system,
    list_testbeds,
    parse_testbed_name,
    physics_from_sys,
    physics_to_sys,
    resolve_testbed,
    task_reward,
)

BACKENDS = ("generalized", "mjx", "chain")
"""How the testbeds are simulated. `generalized` and `mjx` are Brax pipelines (`positional`
and `spring` were tried and left out: their joint springs let the light pole spin up or blow
up). `chain` steps the same equations in closed form (`sim2real.chain_body.ChainBody`) with the
generalized pipeline's semi-implicit Euler: its states agree with `generalized` to rounding
(tested), and its programs are a fraction of the size, so they compile and run faster (README
"Speed to a solved policy"). Its pipeline state is a `ChainState`: joint coordinates and
velocities, no link frames."""


@struct.dataclass
class ChainState:
    """The `chain` backend's pipeline state: what its closed-form step needs and changes."""

    q: Float[Array, " nq"]
    qd: Float[Array, " nv"]


@struct.dataclass
class LabState:
    """What the lab rig remembers between control periods, carried in `State.info["lab"]`."""

    commands: Float[Array, "m act"]
    """The last m commands sent (oldest first), which the latency still has to deliver."""
    motor: Float[Array, " act"]
    """The lagged command the motor delivers now (times the gear: the force, N)."""
    key: jax.Array
    """The sensors' noise stream."""


def _checked_spec(
    system: str,
    task: str,
    variant: str,
    backend: str,
    physics: Physics | None,
    lab: LabEffects | None,
    friction_gradient: FrictionGradient | None,
    episode_length: int,
    timestep: float | None,
    n_frames: int | None,
) -> CartPoleSpec:
    """`CartPole`'s arguments checked (the backend, the lab's integrator on it, the friction
    gradient) and resolved (`resolve_testbed`)."""
    if backend not in BACKENDS:
        raise ValueError(
            f"unsupported Brax backend {backend!r} for the testbeds; expected one of {BACKENDS}"
        )
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
    lab = spec.lab
    if lab is not None and lab.integrator == "rk4" and backend == "mjx":
        raise ValueError(
            "the lab's RK4 integrator runs on the generalized or chain backend, not 'mjx'"
        )
    if not (friction_gradient is None or isinstance(friction_gradient, FrictionGradient)):
        raise ValueError(
            f"friction_gradient must be None or a FrictionGradient, got {friction_gradient!r}"
        )
    return spec


class CartPole(PipelineEnv):
    """A cart-pole with `n_poles` poles in series: one env class for every testbed.

    Observation: cart position, (cos, sin) of each hinge angle, then the joint velocities
    (the `sensor_size` sensors); with `action_history=m`, then the last m commands, the newest
    first (`pods.action_history`). Action: one motor command in [-1, 1] (saturating), scaled
    by the motor's gear (10 N).

    `physics` is the `Physics` the env was built with, kept for display and for rebuilding the
    env; the step reads the physical parameters from `sys` (see `physics_to_sys`), so an env
    whose `sys` was swapped (domain randomization, `with_physics_values`) steps with those.

    `lab` (the `lab` variant's `LabEffects`, None for the others) adds the rig's latency, motor
    lag, stiction, cable and cogging forces, body mismatch, sensors and integrator. The policy
    then observes what the encoders read (`State.obs`), while the reward is the task's on the
    true state: the task is to hold the physical pole up, not its reading.
    """

    def __init__(
        self,
        system: str = "cartpole",
        task: str = "balance",
        variant: str = "sim",
        *,
        physics: Physics | None = None,
        lab: LabEffects | None = None,
        friction_gradient: FrictionGradient | None = None,
        reward_weights: RewardWeights = RewardWeights(),
        initial_noise: InitialStateNoise = InitialStateNoise(),
        episode_length: int = 100,
        backend: str = "generalized",
        timestep: float | None = None,
        n_frames: int | None = None,
        dtype: Any = None,
        action_history: int = 0,
        **kwargs,
    ):
        """Builds a testbed.

        Args:
          system: `cartpole` or `double_cartpole`.
          task: `balance` (start near upright) or `swingup` (start hanging down).
          variant: `sim`, `real` or `lab`; chooses the default `physics`.
          physics: overrides the variant's physics.
          lab: the `lab` variant's effects (default `LabEffects()`); only that variant has them.
          friction_gradient: a smooth surrogate for the slider force's derivative (None: the
            law's own); the rollouts' values are unchanged (`sim2real.lab.FrictionGradient`).
          reward_weights: penalties of the task reward.
          initial_noise: spread of the initial states.
          episode_length: the horizon a rollout or a trainer should use, in env steps.
          backend: `generalized` (default) or `mjx` (Brax pipelines), or `chain` (the same
            equations in closed form; see BACKENDS).
          timestep: physics timestep in seconds (default: PHYSICS_STEP of the system).
          n_frames: physics steps per env step; the control period is timestep * n_frames.
          dtype: float dtype of the system (jnp.float64 needs `jax.enable_x64`).
          action_history: how many past commands the policy observes after the sensors (the
            commands as sent, before the gain; the lab's latency queue is separate).
        """
        self.action_history = check_action_history(action_history)
        spec = _checked_spec(
            system,
            task,
            variant,
            backend,
            physics,
            lab,
            friction_gradient,
            episode_length,
            timestep,
            n_frames,
        )
        self.system_name, self.task, self.variant = system, task, variant
        self.physics, self.lab = spec.physics, spec.lab
        self.friction_gradient = friction_gradient
        self.reward_weights = reward_weights
        self.initial_noise = initial_noise
        self.episode_length = episode_length
        self.n_poles = spec.n_poles

        sys = brax_system(spec, dtype)
        closed_form = backend == "chain"
        # The chain backend keeps Brax's system (actuators, physics parameters) and replaces
        # only the pipeline's step.
        pipeline = "generalized" if closed_form else backend
        super().__init__(sys=sys, backend=pipeline, n_frames=spec.n_frames, **kwargs)
        self._closed_form = closed_form
        if closed_form or self.lab is not None:
            self._chain = ChainBody.of_model(sys.mj_model)
        else:
            self._chain = None

    @property
    def backend(self) -> str:
        """`chain`, or the Brax pipeline's name: what rebuilds this env (a saved residual
        model's simulator, say)."""
        return "chain" if self._closed_form else super().backend

    @property
    def name(self) -> str:
        return f"{self.system_name}_{self.task}_{self.variant}"

    @property
    def action_size(self) -> int:
        return 1

    @property
    def sensor_size(self) -> int:
        """The observation's leading entries that the sensors read."""
        return 1 + 2 * self.n_poles + 1 + self.n_poles

    @property
    def observation_size(self) -> int:
        return self.sensor_size + self.action_history * self.action_size

    def with_action_history(self, action_history: int) -> CartPole:
        """This env observing the last `action_history` commands (0: the sensors alone), its
        physics unchanged: how a dataset's sensor observations are replayed in a simulator
        whose policy observes a history."""
        env = copy.copy(self)
        env.action_history = check_action_history(action_history)
        return env

    def _no_history(self) -> Float[Array, " history"]:
        return jnp.zeros((self.action_history * self.action_size,), self.dtype)

    def _observation(
        self, sensors: Float[Array, " sensors"], state: State, action: Float[Array, 1]
    ) -> Float[Array, " obs"]:
        """The observation after `action` was commanded in `state`: the sensors, and the
        history of `state`'s observation with `action` pushed in."""
        history = push_command(state.obs[self.sensor_size :], action)
        return with_history(sensors, history)

    @property
    def pole_lengths(self) -> tuple[float, ...]:
        """Length of each pole, m, from its capsule in the MJCF."""
        model = self.sys.mj_model
        return tuple(
            2 * float(model.geom_size[model.geom(f"pole{i}" if self.n_poles > 1 else "pole").id, 1])
            for i in range(1, self.n_poles + 1)
        )

    @property
    def dtype(self):
        return self.sys.init_q.dtype

    def reset(self, rng: jax.Array) -> State:
        noise = self.initial_noise
        key_x, key_angle, key_qd = jax.random.split(rng, 3)
        nq = 1 + self.n_poles
        x = jax.random.uniform(key_x, (1,), self.dtype, -noise.cart_position, noise.cart_position)
        angles = jax.random.uniform(
            key_angle, (self.n_poles,), self.dtype, -noise.angle, noise.angle
        )
        if self.task == "swingup":
            # Hanging down: the first hinge at pi, the others straight in line with it.
            angles = angles.at[0].add(jnp.pi)
        qd = jax.random.uniform(key_qd, (nq,), self.dtype, -noise.velocity, noise.velocity)
        pipeline_state = self.pipeline_init(jnp.concatenate([x, angles]), qd)
        zero = jnp.zeros((), self.dtype)
        if self.lab is None:
            obs = with_history(
                self.observe(pipeline_state.q, pipeline_state.qd), self._no_history()
            )
            return State(pipeline_state, obs, zero, zero)
        # The lab's own stream, folded off the reset key: the initial states stay those of
        # `sim` and `real` for the same key, so all three are evaluated from the same starts.
        key_sensor, key_next = jax.random.split(jax.random.fold_in(rng, _LAB_STREAM))
        m = self.lab.command_buffer_length(self._n_frames)
        carry = LabState(
            commands=jnp.zeros((m, self.action_size), self.dtype),
            motor=jnp.zeros((self.action_size,), self.dtype),
            key=key_next,
        )
        obs = with_history(
            self.sense(pipeline_state.q, pipeline_state.qd, key_sensor), self._no_history()
        )
        return State(pipeline_state, obs, zero, zero, info={"lab": carry})

    def step(self, state: State, action: Float[Array, 1]) -> State:
        if self.lab is not None:
            return self._lab_step(state, action)
        pipeline_state = self.pipeline_step(state.pipeline_state, action)
        sensors = self.observe(pipeline_state.q, pipeline_state.qd)
        reward = self.task_reward(sensors, action)
        obs = self._observation(sensors, state, action)
        return state.replace(pipeline_state=pipeline_state, obs=obs, reward=reward)

    def _lab_step(self, state: State, action: Float[Array, 1]) -> State:
        """One control period of the lab rig: the command joins the latency's queue; each
        physics step takes the command sent d steps earlier, passes it through the motor's
        lag, and integrates (RK4 or Euler) under it and the passive forces; the sensors read
        the result."""
        lab, carry = self.lab, state.info["lab"]
        # The gain scales the command before the motor's control range saturates it, as in
        # `pipeline_step`.
        command = physics_from_sys(self.sys)["actuator_gain"] * action
        queue = jnp.concatenate([carry.commands, command[None]])
        offsets = jnp.asarray(lab.command_offsets(self._n_frames))
        decay = lab.motor_decay(float(self.sys.opt.timestep))

        def physics_step(inner, offset):
            pipeline_state, motor = inner
            delayed = queue[offset]
            if lab.motor_time_constant:
                # The lag's exact solution for a command held over the step.
                target = jnp.clip(delayed, -1.0, 1.0)
                motor = target + decay * (motor - target)
            else:
                motor = delayed
            return (self._integrate(pipeline_state, motor), motor), None

        (pipeline_state, motor), _ = jax.lax.scan(
            physics_step, (state.pipeline_state, carry.motor), offsets
        )
        if lab.integrator == "rk4":
            # RK4 moved q and qd alone; refresh the pipeline's kinematics once per period.
            pipeline_state = self.pipeline_init(pipeline_state.q, pipeline_state.qd)
        key_sensor, key_next = jax.random.split(carry.key)
        q, qd = pipeline_state.q, pipeline_state.qd
        carry = LabState(commands=queue[1:], motor=motor, key=key_next)
        return state.replace(
            pipeline_state=pipeline_state,
            obs=self._observation(self.sense(q, qd, key_sensor), state, action),
            reward=self.task_reward(self.observe(q, qd), action),
            info={**state.info, "lab": carry},
        )

    def _integrate(self, pipeline_state: Any, motor: jax.Array) -> Any:
        """One physics step under the motor command `motor` and the passive forces."""

        def act(q, qd):
            return jnp.concatenate([motor, self.passive_forces(q, qd)])

        if self.lab.integrator == "euler":
            return self._physics_step(pipeline_state, act(pipeline_state.q, pipeline_state.qd))

        def acceleration(q, qd):
            # The body's equations of motion in closed form (they agree with the generalized
            # pipeline's and MuJoCo's to rounding, tested), with the forces of each stage.
            tau = actuator.to_tau(self.sys, act(q, qd), q, qd)
            return self._chain.acceleration(q, qd, tau, xp=jnp)

        q, qd = lab_physics.rk4_step(
            acceleration, pipeline_state.q, pipeline_state.qd, float(self.sys.opt.timestep)
        )
        return pipeline_state.replace(q=q, qd=qd)

    def sense(self, q: jax.Array, qd: jax.Array, key: jax.Array) -> Float[Array, " obs"]:
        """What the lab's encoders and velocity estimates read of (q, qd): positions and
        angles quantized (with a straight-through gradient), velocities with Gaussian noise."""
        lab = self.lab
        stop = jax.lax.stop_gradient
        q = jnp.concatenate(
            [
                lab_physics.quantize(q[:1], lab.position_resolution, xp=jnp, straight_through=stop),
                lab_physics.quantize(q[1:], lab.angle_resolution, xp=jnp, straight_through=stop),
            ]
        )
        if lab.sensor_noise:
            scale = jnp.asarray(
                [lab.linear_velocity_noise] + [lab.angular_velocity_noise] * self.n_poles,
                self.dtype,
            )
            qd = qd + scale * jax.random.normal(key, qd.shape, self.dtype)
        return self.observe(q, qd)

    def with_physics_values(self, values: PhysicsValues) -> CartPole:
        """This env with its `sys` carrying `values` (any subset of `PHYSICS_FIELDS`).

        The values may be traced: `jax.grad` of a rollout of the returned env with respect to
        them is how system identification fits the physics. The copy's `physics` attribute
        still describes the env it was made from; `with_physics` makes an env that describes
        itself.
        """
        env = copy.copy(self)
        env.sys = physics_to_sys(self.sys, values)
        return env

    def with_physics(self, physics: Physics) -> CartPole:
        """This env (same body, task, backend, dtype) with other physics, e.g. the parameters
        `sim2real.sysid.identify` fitted: its system carries them, `physics` describes them."""
        env = self.with_physics_values(dataclasses.asdict(physics))
        env.physics = physics
        return env

    def pipeline_step(self, pipeline_state: Any, action: jax.Array) -> Any:
        # The gain scales the command before the motor's control range saturates it.
        motor = physics_from_sys(self.sys)["actuator_gain"] * action

        def physics_step(state, _):
            # The real system's extra forces depend on the velocity, so they are recomputed
            # every physics step, not held over the control period.
            act = jnp.concatenate([motor, self.passive_forces(state.q, state.qd)])
            return self._physics_step(state, act), None

        return jax.lax.scan(physics_step, pipeline_state, (), self._n_frames)[0]

    def pipeline_init(self, q: jax.Array, qd: jax.Array) -> Any:
        if self._closed_form:
            return ChainState(q=q, qd=qd)
        return super().pipeline_init(q, qd)

    def _physics_step(self, pipeline_state: Any, act: jax.Array) -> Any:
        """One physics step under the actuator inputs `act`: the Brax pipeline's, or (the
        chain backend) semi-implicit Euler on the closed-form equations, as the generalized
        pipeline integrates them (the testbeds have no joint damping, armature or contact)."""
        if not self._closed_form:
            return self._pipeline.step(self.sys, pipeline_state, act, self._debug)
        q, qd = pipeline_state.q, pipeline_state.qd
        tau = actuator.to_tau(self.sys, act, q, qd)
        q, qd = lab_physics.euler_step(
            lambda q, qd: self._chain.acceleration(q, qd, tau, xp=jnp),
            q,
            qd,
            self.sys.opt.timestep,
        )
        return ChainState(q=q, qd=qd)

    def passive_forces(
        self, q: Float[Array, " nq"], qd: Float[Array, " nv"]
    ) -> Float[Array, " nv"]:
        """Generalized forces of damping and friction on each joint (zero for `sim`), and the
        lab's stiction, cable and cogging on the slider (see `sim2real.lab.slider_force`)."""
        p = physics_from_sys(self.sys)
        slider = lab_physics.slider_force(
            p, self.lab, q[:1], qd[:1], xp=jnp, gradient=self.friction_gradient
        )
        return jnp.concatenate([slider, lab_physics.hinge_torques(p, qd[1:])])

    def observe(self, q: Float[Array, " nq"], qd: Float[Array, " nv"]) -> Float[Array, " obs"]:
        angles = q[1:]
        return jnp.concatenate(
            [q[:1], jnp.stack([jnp.cos(angles), jnp.sin(angles)], -1).ravel(), qd]
        )

    def state_from_obs(self, obs: Float[Array, " obs"]) -> tuple[jax.Array, jax.Array]:
        """Inverse of `observe`: joint positions (angles wrapped to (-pi, pi]) and velocities,
        from the sensor part of an observation (an action history after it is ignored)."""
        n = self.n_poles
        cos_sin = obs[1 : 1 + 2 * n].reshape(n, 2)
        angles = jnp.arctan2(cos_sin[:, 1], cos_sin[:, 0])
        return jnp.concatenate([obs[:1], angles]), obs[1 + 2 * n : self.sensor_size]

    def task_reward(self, obs: Float[Array, " obs"], action: Float[Array, 1]) -> Float[Array, ""]:
        """The reward for arriving at observation `obs` by command `action`."""
        return task_reward(obs, action, self.n_poles, self.reward_weights, xp=jnp)


_LAB_STREAM = 7
"""`fold_in` index of the lab's sensor stream in a reset key."""


def make_testbed(name: str, **kwargs) -> CartPole:
    """The testbed registered as `name`, with constructor overrides (physics, backend, ...).
    `physics` may also be a mapping of `Physics`'s fields, as a saved model's sidecar stores it
    (so this is the `make_sim` that `dynamics_models.load_model` takes)."""
    system, task, variant = parse_testbed_name(name)
    if isinstance(kwargs.get("physics"), Mapping):
        kwargs["physics"] = Physics(**kwargs["physics"])
    return CartPole(system, task, variant, **kwargs)


def register_testbeds(register: Callable[[str, Any], None] = envs.register_environment) -> None:
    for name in list_testbeds():
        register(name, functools.partial(make_testbed, name))


register_testbeds()
