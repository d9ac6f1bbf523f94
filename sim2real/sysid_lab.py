"""System identification in the lab family: `Physics`, and the rig's actuator latency, motor
lag and pole body (`SysIDConfig(family="lab")`).

`sim2real.sysid.identify` fits damping, friction and gain in the simulator as it is. A lab rig
(`LabEffects`) also delays its commands, lags them through its motor and carries a body off
the MJCF's. This family fits, beside `SysIDConfig.parameters`:

- the latency d, in physics steps of `SysIDConfig.lab_timestep`. An integer has no gradient:
  every d in 0 .. `max_delay_steps` gets its own fit of the continuous parameters, all of
  them in one vmapped program (d is a traced index into the command queue, so one
  compilation serves every delay), and the d whose fitted loss over every window is lowest
  is kept;
- the motor time constant tau (`LabEffects.motor_time_constant`);
- the pole's mass and a length scale that moves its centre of mass with it (LAB_FIT_PARAMETERS).

The identified simulator is a `lab`-variant testbed whose `LabEffects` holds only those
(`LabEffects.off(...)`: no stiction, cable, cogging or sensor model), built by
`identified_simulator`, so PODS trains in the testbeds' own step.

Why the cart's mass is given, not fitted. The equations of motion are M(q) qdd + h(q, qd) =
tau, with M and h (gravity's torque included) linear in the masses and inertias, and tau
linear in the gain, the damping and the friction. Multiplying all of them by one factor k
leaves every trajectory unchanged (the motor's saturation at |gain u| = 1 aside, which random
commands in [-1, 1] with a gain below 1 never reach; tested). So commands and motion fix
masses and forces only up to k, and one of them must be known: a lab weighs its cart
(`SysIDConfig.cart_mass_scale`), and the pole's mass, the gain, the damping and the friction
come out relative to it. With the cart's mass known, the motion also fixes just two numbers
of the pole: its mass times the lever to its centre (the cart's coupling) and the ratio of
that to its inertia about the hinge (its pendulum frequency); a rod-like pole whose length
and centre scale together has two such numbers, its mass and its length.

How the masses are differentiated. `sim2real.chain_body.ChainBody.acceleration` is plain arithmetic
on the mass properties, so the fit builds a `ChainBody` of traced scalars inside the loss, as
`apply_body_mismatch` scales them; the rest of a physics step is the testbed's own pieces
(`CartPole.passive_forces`, Brax's `actuator.to_tau`, `lab.rk4_step` / `lab.euler_step`). The
actuator (queue and lag) is written here again with a traced tau and d; a test checks the
fit's step against the testbed's to rounding. Derivative-free search over the masses was the
other way; it would need a compilation per body or a rebuilt system per evaluation.

The actuator's state at a window's start. Multiple shooting restarts each window from a
recorded observation, but the lab's latency queue and motor state are not observed. They
depend on the commands alone, not on the motion: the queue holds the last commands, and the
motor is a linear filter of the clipped delayed commands, m_{t+1} = a m_t + sum_j w_j
clip(c_{t + floor((j - d) / n)}), from rest at the episode's start (as the lab resets). The fit
computes it exactly, in closed form, for every window (`_actuator_at`).

Integrator and step. By default the identified simulator steps as the lab does, classical RK4
at 5 ms: the latency's unit is then the lab's physics step (20 ms = 4 steps), and the fit
attributes no integration error of the simulator's 25 ms Euler step to the parameters. The
price is ten RK4 steps per 50 ms control period in PODS's rollouts, as the oracle pays on the
lab twin. `lab_integrator=euler` with `lab_timestep=null` fits on the simulator's step instead
(latency in 25 ms steps).

    physics, lab, history = identify_lab(SysIDConfig(family="lab"), sim, data, key)
    identified_sim = identified_simulator(sim, physics, lab)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from brax import actuator
from jaxtyping import Array, Float

import sim2real.lab as lab_physics
from dynamics_models.data import ObsLayout, TransitionDataset
from sim2real.chain_body import ChainBody
from sim2real.lab import LabEffects
from sim2real.real_system import RealTrajectories
from sim2real.sysid import FitWindows, SysIDConfig, adam_fit, fit_data, fit_windows
from sim2real.testbed_spec import Physics
from sim2real.testbeds import CartPole

LAB_RECORD_FIELDS = (
    "latency_steps",
    "motor_time_constant",
    "cart_mass_scale",
    "pole_mass_scale",
    "pole_length_scale",
    "pole_com_scale",
    "integrator",
    "timestep",
)
"""The `LabEffects` fields an identified lab family sets (the others stay off)."""


def identified_effects(
    config: SysIDConfig, latency_steps: int, values: dict[str, float]
) -> LabEffects:
    """The lab family's `LabEffects`: latency, the fitted fields (`values`), the weighed
    cart, the length scale moving the centre of mass too, everything else off."""
    length = values.get("pole_length_scale", 1.0)
    return LabEffects.off(
        latency_steps=int(latency_steps),
        motor_time_constant=values.get("motor_time_constant", 0.0),
        cart_mass_scale=config.cart_mass_scale,
        pole_mass_scale=values.get("pole_mass_scale", 1.0),
        pole_length_scale=length,
        pole_com_scale=length,
        integrator=config.lab_integrator,
        timestep=config.lab_timestep,
    )


def identified_simulator(sim: CartPole, physics: Physics, lab: LabEffects | None) -> CartPole:
    """The simulator `sim` (its task, backend, dtype, history, reward, starts, gradient
    option) with identified physics: `sim.with_physics(physics)` for the physics family
    (`lab` None), a `lab`-variant testbed with `lab`'s effects for the lab family."""
    if lab is None:
        return sim.with_physics(physics)
    timestep = float(sim.sys.opt.timestep)
    return CartPole(
        sim.system_name,
        sim.task,
        "lab",
        physics=physics,
        lab=lab,
        friction_gradient=sim.friction_gradient,
        reward_weights=sim.reward_weights,
        initial_noise=sim.initial_noise,
        episode_length=sim.episode_length,
        backend=sim.backend,
        timestep=timestep,
        n_frames=round(float(sim.dt) / timestep),
        dtype=sim.dtype,
        action_history=sim.action_history,
    )


def scaled_chain(
    nominal: ChainBody, cart_mass_scale, pole_mass_scale, pole_length_scale, pole_com_scale
) -> ChainBody:
    """`nominal`'s chain with the lab's body scales (floats or traced scalars), as
    `sim2real.chain_body.apply_body_mismatch` scales the MuJoCo model: a pole's inertia about its
    centre with its mass and the square of its length, hinges beyond the first with it."""
    return ChainBody(
        cart_mass=nominal.cart_mass * cart_mass_scale,
        masses=tuple(m * pole_mass_scale for m in nominal.masses),
        centres=tuple(c * pole_com_scale for c in nominal.centres),
        inertias=tuple(i * pole_mass_scale * pole_length_scale**2 for i in nominal.inertias),
        links=tuple(link * pole_length_scale for link in nominal.links),
        gravity=nominal.gravity,
    )


@dataclasses.dataclass(frozen=True)
class _Family:
    """The fit's static description: its base env (a lab testbed with every effect off, on
    the identified simulator's step), the parameters in the order of the fitted vector."""

    env: CartPole
    nominal: ChainBody
    physics_names: tuple[str, ...]
    lab_names: tuple[str, ...]
    cart_mass_scale: float
    buffer: int
    """Past commands the largest latency tried can reach: ceil(max_delay / n_frames)."""

    @property
    def n_frames(self) -> int:
        return round(float(self.env.dt) / self.timestep)

    @property
    def timestep(self) -> float:
        return float(self.env.sys.opt.timestep)

    def split(self, theta: Float[Array, " n_params"]) -> tuple[dict, dict]:
        n = len(self.physics_names)
        physics = dict(zip(self.physics_names, theta[:n], strict=True))
        lab = dict(zip(self.lab_names, theta[n:], strict=True))
        return physics, lab


@functools.lru_cache(maxsize=8)
def _make_family(config: SysIDConfig, sim: CartPole) -> _Family:
    """Cached, so that fits of one config and simulator share their compilation (the family
    is a static argument of the jitted fit)."""
    # The nominal body: the fit scales the chain itself (`scaled_chain`).
    base_effects = LabEffects.off(integrator=config.lab_integrator, timestep=config.lab_timestep)
    # The fit's own env: the closed-form chain (it steps the same equations) and the law's
    # own friction derivative (the parameters' derivative is the law's either way).
    env = CartPole(
        sim.system_name,
        sim.task,
        "lab",
        physics=sim.physics,
        lab=base_effects,
        backend="chain",
        timestep=float(sim.sys.opt.timestep),
        n_frames=round(float(sim.dt) / float(sim.sys.opt.timestep)),
        dtype=sim.dtype,
    )
    family = _Family(
        env=env,
        nominal=ChainBody.of_model(env.sys.mj_model),
        physics_names=tuple(config.parameters),
        lab_names=tuple(config.lab_parameters),
        cart_mass_scale=config.cart_mass_scale,
        buffer=0,
    )
    return dataclasses.replace(family, buffer=-(-config.max_delay_steps // family.n_frames))


def _decay_power(family: _Family, tau, steps):
    """exp(-steps h / tau): the lag's memory after `steps` physics steps (0 without a lag)."""
    if tau is None:
        return (jnp.asarray(steps) == 0).astype(family.env.dtype)
    return jnp.exp(-jnp.asarray(steps, family.env.dtype) * family.timestep / tau)


def _actuator_at(
    family: _Family, delay, gain, tau, actions: Float[Array, "episodes horizon act"]
) -> tuple[Float[Array, "episodes horizon buffer act"], Float[Array, "episodes horizon act"]]:
    """The lab actuator's state before every control period of every episode, from rest:
    the queue [c_{t-M}, ..., c_{t-1}] of commands sent (c = gain * a) and the motor's lagged
    command (module docstring)."""
    n, big_m = family.n_frames, family.buffer
    horizon = actions.shape[1]
    commands = gain * actions
    padded = jnp.concatenate([jnp.zeros_like(commands[:, :big_m]), commands], axis=1)
    t = np.arange(horizon)
    queue = padded[:, t[:, None] + np.arange(big_m)[None]]
    # Physics step j of period t drives with c_{t + floor((j - d) / n)}; over a period the
    # motor keeps a^n of its state and takes (1 - a) a^{n-1-j} of step j's target.
    j = jnp.arange(n)
    lag = jnp.floor_divide(j - delay, n)
    targets = jnp.clip(padded[:, big_m + t[:, None] + lag[None]], -1.0, 1.0)
    if tau is None:
        weights = (j == n - 1).astype(actions.dtype)
    else:
        weights = (1 - _decay_power(family, tau, 1)) * _decay_power(family, tau, n - 1 - j)
    inflow = jnp.einsum("ethc,h->etc", targets, weights)
    # m_t = sum_{s<t} a^{n (t-1-s)} inflow_s: the recursion in closed form, one matrix.
    gap = t[:, None] - 1 - t[None, :]
    carry = jnp.where(gap >= 0, _decay_power(family, tau, n * np.maximum(gap, 0)), 0.0)
    motor = jnp.einsum("ts,esc->etc", carry, inflow)
    return queue, motor


def _window_prediction(
    family: _Family,
    theta: Float[Array, " n_params"],
    delay,
    obs0: Float[Array, " obs"],
    queue: Float[Array, "buffer act"],
    motor: Float[Array, " act"],
    actions: Float[Array, "window act"],
) -> Float[Array, "window obs"]:
    """The lab family's open-loop prediction of a window from a recorded observation and the
    actuator's state there: the latency queue and the lag as `CartPole._lab_step` steps them,
    the testbed's passive forces and integrator, the chain's body scaled by `theta`."""
    physics_values, lab_values = family.split(theta)
    env = family.env.with_physics_values(physics_values)
    tau = lab_values.get("motor_time_constant")
    length = lab_values.get("pole_length_scale", 1.0)
    chain = scaled_chain(
        family.nominal,
        family.cart_mass_scale,
        lab_values.get("pole_mass_scale", 1.0),
        length,
        length,
    )
    decay = None if tau is None else _decay_power(family, tau, 1)
    gain = physics_values.get("actuator_gain", family.env.physics.actuator_gain)
    h, n = family.timestep, family.n_frames
    integrate = lab_physics.rk4_step if env.lab.integrator == "rk4" else lab_physics.euler_step
    offsets = family.buffer + jnp.floor_divide(jnp.arange(n) - delay, n)

    def physics_step(inner, offset, queue):
        q, qd, motor = inner
        target = jnp.clip(queue[offset], -1.0, 1.0)
        motor = target if decay is None else target + decay * (motor - target)

        def acceleration(q, qd):
            act = jnp.concatenate([motor, env.passive_forces(q, qd)])
            return chain.acceleration(q, qd, actuator.to_tau(env.sys, act, q, qd), xp=jnp)

        q, qd = integrate(acceleration, q, qd, h)
        return (q, qd, motor), None

    def period(carry, action):
        q, qd, motor, queue = carry
        queue = jnp.concatenate([queue, (gain * action)[None]])
        # Unrolled: a loop of a few tiny steps costs more in its overhead than in its work.
        (q, qd, motor), _ = jax.lax.scan(
            lambda inner, offset: physics_step(inner, offset, queue),
            (q, qd, motor),
            offsets,
            unroll=True,
        )
        return (q, qd, motor, queue[1:]), env.observe(q, qd)

    q, qd = env.state_from_obs(obs0)
    _, predicted = jax.lax.scan(period, (q, qd, motor, queue), actions)
    return predicted


def _window_index(data: TransitionDataset, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(episode, start) of every window `data.windows(window)` returns, in its order."""
    starts = np.arange(data.horizon - window + 1)
    keep = data.mask[:, starts + window - 1].ravel()
    episodes = np.repeat(np.arange(data.n_trajectories), len(starts))[keep]
    return episodes, np.tile(starts, data.n_trajectories)[keep]


def identify_lab(
    config: SysIDConfig,
    sim_env: CartPole,
    trajectories: RealTrajectories | TransitionDataset,
    key: jax.Array,
) -> tuple[Physics, LabEffects, dict[str, np.ndarray]]:
    """Fits the lab family (module docstring) to the real `trajectories`.

    Starts from `sim_env.physics` (floored, see `SysIDConfig.initial_floor`), no lag
    (tau at the floor) and the nominal pole; `key` draws the minibatches, the same for every
    latency. Returns the identified `Physics` and `LabEffects` (`identified_simulator(sim_env,
    physics, lab)` is the identified simulator) and the fit's history: `sysid/delay_loss`
    (each latency's loss over every window, after its fit), and per Adam step of the kept
    latency `sysid/loss`, `sysid/<name>` and `sysid/rejected_nonfinite` (as `identify`'s), and
    `sysid/loss_by_delay` (every latency's minibatch loss, [delays, steps]).
    """
    data, sim_env = fit_data(trajectories, sim_env, config)
    family = _make_family(config, sim_env)
    dtype = family.env.dtype
    windows = fit_windows(data, ObsLayout.of_env(family.env), config.window, dtype)
    episodes, starts = _window_index(data, config.window)
    start = sim_env.physics
    initial = [max(getattr(start, name), config.initial_floor) for name in config.parameters]
    initial += [
        config.initial_floor if name == "motor_time_constant" else 1.0
        for name in config.lab_parameters
    ]
    log_theta = jnp.log(jnp.asarray(initial, dtype))
    delays = jnp.arange(config.max_delay_steps + 1)
    log_theta, delay_loss, history = _fit_delays(
        config,
        family,
        log_theta,
        key,
        delays,
        windows,
        episode_actions=jnp.asarray(data.actions, dtype),
        episodes=jnp.asarray(episodes),
        starts=jnp.asarray(starts),
    )
    delay_loss = np.asarray(delay_loss, np.float64)
    # A latency whose fit diverged has a non-finite loss; it is never the one kept.
    best = int(np.nanargmin(np.where(np.isfinite(delay_loss), delay_loss, np.nan)))
    fitted = np.exp(np.asarray(log_theta[best], np.float64))
    names = (*config.parameters, *config.lab_parameters)
    values = {name: float(v) for name, v in zip(names, fitted, strict=True)}
    physics = dataclasses.replace(start, **{n: values[n] for n in config.parameters})
    lab = identified_effects(config, best, {n: values[n] for n in config.lab_parameters})
    record = {key: np.asarray(value[best]) for key, value in history.items()}
    record["sysid/loss_by_delay"] = np.asarray(history["sysid/loss"])
    record["sysid/delay_loss"] = delay_loss
    return physics, lab, record


@functools.partial(jax.jit, static_argnames=("config", "family"))
def _fit_delays(
    config: SysIDConfig,
    family: _Family,
    log_theta: Float[Array, " n_params"],
    key: jax.Array,
    delays: jax.Array,
    windows: FitWindows,
    *,
    episode_actions: Float[Array, "episodes horizon act"],
    episodes: jax.Array,
    starts: jax.Array,
) -> tuple[Float[Array, "delays n_params"], Float[Array, " delays"], dict[str, Array]]:
    """One fit per latency, vmapped: Adam in log space as `sim2real.sysid._fit`, then each
    fit's loss over every window (`episodes`, `starts`: where each window starts in
    `episode_actions`). The data are arguments, so datasets of one shape share a
    compilation."""
    layout = ObsLayout.of_env(family.env)
    obs0, window_actions, targets, scale = windows
    n_windows = obs0.shape[0]
    batch = config.minibatch_size(n_windows)
    names = (*family.physics_names, *family.lab_names)

    def actuator_states(theta, delay):
        physics_values, lab_values = family.split(theta)
        gain = physics_values.get("actuator_gain", family.env.physics.actuator_gain)
        tau = lab_values.get("motor_time_constant")
        return _actuator_at(family, delay, gain, tau, episode_actions)

    def window_loss(theta, delay, idx, queues, motors):
        """Squared error summed over the windows `idx` (their mean over windows is the fit's
        loss)."""
        e, s = episodes[idx], starts[idx]

        def window_error(obs0, queue, motor, actions, targets):
            predicted = _window_prediction(family, theta, delay, obs0, queue, motor, actions)
            return layout.difference(layout.to_state(predicted), targets) / scale

        errors = jax.vmap(window_error)(
            obs0[idx], queues[e, s], motors[e, s], window_actions[idx], targets[idx]
        )
        return jnp.mean(errors**2, axis=(1, 2))

    def loss(log_theta, delay, idx):
        theta = jnp.exp(log_theta)
        return jnp.mean(window_loss(theta, delay, idx, *actuator_states(theta, delay)))

    def fit(delay):
        def minibatch(step_key):
            if batch < n_windows:
                return (jax.random.choice(step_key, n_windows, (batch,), replace=False),)
            return (jnp.arange(n_windows),)

        fitted, history = adam_fit(
            lambda log_theta, idx: loss(log_theta, delay, idx),
            log_theta,
            key,
            config,
            minibatch,
            names=names,
        )
        # Every window, in chunks of the minibatch's size: the loss that chooses the latency.
        chunks = -(-n_windows // batch)
        idx = jnp.minimum(jnp.arange(chunks * batch), n_windows - 1).reshape(chunks, batch)
        weights = (jnp.arange(chunks * batch) < n_windows).reshape(chunks, batch)

        theta = jnp.exp(fitted)
        states = actuator_states(theta, delay)

        def chunk_loss(total, chunk):
            idx, w = chunk
            # Repeated last windows pad the last chunk; their weight is zero.
            return total + jnp.sum(window_loss(theta, delay, idx, *states) * w), None

        total, _ = jax.lax.scan(chunk_loss, jnp.zeros((), log_theta.dtype), (idx, weights))
        return fitted, total / n_windows, history

    return jax.vmap(fit)(delays)


__all__ = [
    "LAB_RECORD_FIELDS",
    "identified_effects",
    "identified_simulator",
    "identify_lab",
    "scaled_chain",
]
