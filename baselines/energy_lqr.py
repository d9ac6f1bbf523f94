"""The classical swing-up a control lab would run first: pump the pole's energy up to that of
the upright at rest, then catch it with LQR (Astrom & Furuta, "Swinging up a pendulum by
energy control", Automatica 2000; the catch is `baselines.lqr`).

Every constant comes from the `sim` testbed it is designed on, never from a real one (a
controller tuned on the real would be an oracle, not a baseline): the pole's mass, centre of
mass and inertia from the MJCF (`sim2real.chain_body.ChainBody`), the motor's gear, gravity, and the
LQR gain from the exact linearization of `sim`'s step.

With theta the pole's angle from upright and J its inertia about the hinge, the pole's energy
relative to the upright at rest is

    E = J theta'^2 / 2 + m g l (cos theta - 1)          (0 up and at rest, -2 m g l hanging)

and the cart's acceleration a changes it at dE/dt = -m l a theta' cos theta. So pushing the
cart with sign(-theta' cos theta) * (E* - E) pumps energy in while E < E* and takes it out
above. The swing-up command is

    u = clip(k_E (E* - E) s theta' cos theta - k_x x - k_v x',  -1, 1)

with s the sign the linearization gives the command's effect on theta'' (negative: a push
to +x tips the pole toward -x), and a weak pull of the cart toward the origin so that the
pumping does not drift it away. A large k_E makes the pumping bang-bang, the fastest there
is under the motor's limit.

Switching rule: the LQR catch takes over as soon as the pole is within `catch_angle` of
upright (the angle alone, since the policy is memoryless: no hysteresis). Near the top the
energy control has slowed the pole to what the LQR's region of attraction takes.

On the double cart-pole the controller is the LQR catch alone: it balances (the balance
task), and no energy law for two poles is offered here, so its swing-up is refused.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from baselines import lqr
from pods.drivers import Metrics
from pods.rollout import Policy
from pods.validation import is_number, require
from sim2real.chain_body import ChainBody

ProgressFn = Callable[[int, Metrics], None]


@dataclasses.dataclass(frozen=True)
class EnergyLQRConfig(lqr.LQRConfig):
    """The LQR catch's cost weights (`baselines.lqr.LQRConfig`'s fields), and the swing-up's.

    The catch weighs the pole's angle ten times the reward's curvature and the command a
    tenth of `LQRConfig`'s: a stiffer catch, which holds the pole within the solved tolerance
    against friction the design does not know of (with `LQRConfig`'s weights the friction
    real keeps the pole in a limit cycle of about 0.25 rad; docs/results/lab-swingup.md)."""

    pole_angle: float = 2.5
    """Per rad^2 of the mean squared absolute pole angle (`LQRConfig.pole_angle` x 10)."""
    action: float = 0.1
    """R: per unit^2 of motor command (`LQRConfig.action` / 10)."""
    energy_gain: float = 10.0
    """k_E, per J s/rad: the command per unit of missing energy times the pole's angular
    velocity. It pumps at the motor's limit while much energy is missing and eases off near
    the target; larger ones overshoot the target in `sim`'s frictionless swing."""
    energy_target: float = 0.0
    """E*, J, relative to the upright at rest: 0 brings the pole to the top with no speed."""
    catch_angle: float = 0.4
    """rad: within this angle of upright the LQR catch takes over."""
    cart_position_gain: float = 0.1
    """k_x, per m: the swing-up's pull of the cart toward the origin."""
    cart_velocity_gain: float = 0.1
    """k_v, per m/s: its damping of the cart's motion."""

    def __post_init__(self):
        super().__post_init__()
        for name in ("energy_gain", "cart_position_gain", "cart_velocity_gain"):
            value = getattr(self, name)
            require(is_number(value) and value >= 0, self, name, "a finite number >= 0")
        require(is_number(self.energy_target), self, "energy_target", "a finite number")
        require(
            is_number(self.catch_angle) and 0 < self.catch_angle < math.pi,
            self,
            "catch_angle",
            "a number in (0, pi)",
        )


@dataclasses.dataclass(frozen=True)
class PoleEnergy:
    """What the energy law needs of the nominal pole (one pole on a hinge, on a cart)."""

    mass: float
    """kg."""
    centre: float
    """m, from the hinge to the centre of mass."""
    inertia: float
    """kg m^2, about the hinge."""
    gravity: float
    """m/s^2."""

    @classmethod
    def of_env(cls, env: Any) -> PoleEnergy:
        """The pole of a single cart-pole testbed's body (its `sim` MJCF, for this baseline)."""
        body = ChainBody.of_model(env.sys.mj_model)
        if len(body.masses) != 1:
            raise ValueError(f"the energy swing-up takes one pole, not {len(body.masses)}")
        (mass,), (centre,), (inertia,) = body.masses, body.centres, body.inertias
        return cls(mass, centre, inertia + mass * centre**2, body.gravity)

    def energy(self, angle: Any, velocity: Any) -> Any:
        """E relative to the upright at rest (module docstring), J."""
        return 0.5 * self.inertia * velocity**2 + self.mass * self.gravity * self.centre * (
            jnp.cos(angle) - 1.0
        )


def make_policy_factory(
    env: Any, config: EnergyLQRConfig, pole: PoleEnergy | None, pump_sign: float
) -> Callable[[Float[Array, "act nz"]], Policy]:
    """`make_policy(K)`: the energy swing-up with the LQR catch of gain K (for `pole` None,
    the catch alone)."""
    catch = lqr.make_policy_factory(env)

    def make_policy(gain: Float[Array, "act nz"]) -> Policy:
        balance = catch(gain)
        if pole is None:
            return balance

        def policy(obs: Float[Array, " obs"]) -> Float[Array, " act"]:
            q, qd = env.state_from_obs(obs)
            x, angle, x_dot, angle_dot = q[0], q[1], qd[0], qd[1]
            missing = config.energy_target - pole.energy(angle, angle_dot)
            pump = config.energy_gain * missing * pump_sign * angle_dot * jnp.cos(angle)
            centre = config.cart_position_gain * x + config.cart_velocity_gain * x_dot
            swing = jnp.clip(pump - centre, -1.0, 1.0)[None]
            near_top = jnp.abs(angle) < config.catch_angle
            return jnp.where(near_top, balance(obs), swing)

        return policy

    return make_policy


def train(
    config: EnergyLQRConfig, env: Any, key: Any, *, progress_fn: ProgressFn | None = None
) -> tuple[Callable[[Float[Array, "act nz"]], Policy], Float[Array, "act nz"], list[Metrics]]:
    """The energy swing-up with LQR catch designed on `env` (the `sim` testbed).

    Returns `(make_policy, K, metrics)`, the baselines' convention (`baselines.lqr.train`):
    the LQR gain is the only array; the energy law's constants are the nominal body's. On a
    double cart-pole (or a balance task, where the pole starts near the top anyway) it is the
    LQR catch alone.
    """
    start = time.perf_counter()
    make_catch, gain, (lqr_metrics,) = lqr.train(config, env, key)
    pole, pump_sign = None, 0.0
    if env.n_poles == 1:
        pole = PoleEnergy.of_env(env)
        a, b = lqr.linearize(env)
        # The command's effect on the pole's angular velocity near the top (index n_q + 1).
        pump_sign = float(np.sign(np.asarray(b)[env.sys.q_size() + 1, 0]))
        if pump_sign == 0.0:
            raise ValueError("the command does not move the pole in the linearization")
    metrics = {
        **lqr_metrics,
        "train/wall_clock_s": time.perf_counter() - start,
        "train/pole_energy_to_top": 0.0
        if pole is None
        else 2 * pole.mass * pole.gravity * pole.centre,
    }
    if progress_fn is not None:
        progress_fn(0, metrics)
    del make_catch
    return make_policy_factory(env, config, pole, pump_sign), gain, [metrics]


__all__ = ["EnergyLQRConfig", "PoleEnergy", "make_policy_factory", "train"]
