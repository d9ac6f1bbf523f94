"""The cart-pole's body as a planar chain (`ChainBody`): its mass properties read off a
testbed's MuJoCo model and its equations of motion in closed form, which the `chain` backend,
the lab's RK4 steps and the lab family's identification step with; and the lab's body
mismatch applied to the MuJoCo model (`apply_body_mismatch`).

Split from `sim2real.lab`, whose `LabEffects` say how far the body is off its nominal.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import mujoco
import numpy as np

from sim2real.lab import LabEffects


@dataclasses.dataclass(frozen=True)
class ChainBody:
    """A cart on a slider carrying a planar chain of poles on hinges (axis +y, angle 0 up,
    each hinge relative to the pole below): the mass properties its equations of motion need.
    """

    cart_mass: float
    """kg, the cart body alone."""
    masses: tuple[float, ...]
    """kg, each pole."""
    centres: tuple[float, ...]
    """m, from each pole's hinge to its centre of mass, along the pole."""
    inertias: tuple[float, ...]
    """kg m^2, each pole's moment of inertia about its centre of mass, about the hinge axis."""
    links: tuple[float, ...]
    """m, from each hinge to the next one (one fewer than the poles)."""
    gravity: float
    """m/s^2, downward."""

    @classmethod
    def of_model(cls, model: mujoco.MjModel) -> ChainBody:
        """The chain a testbed's MuJoCo model describes; refuses one that is not such a chain
        (an off-axis centre of mass, a rotated inertia, armature or joint damping)."""
        poles = pole_names(model)
        ids = [model.body(name).id for name in poles]
        for body in ids:
            off_axis = np.abs(model.body_ipos[body, :2]).max()
            frame = np.zeros(9)
            mujoco.mju_quat2Mat(frame, model.body_iquat[body])
            # The inertia's principal frame must keep the hinge axis y (a flip is fine).
            rotated = 1.0 - abs(frame.reshape(3, 3)[1, 1])
            if off_axis > 1e-12 or rotated > 1e-9:
                raise ValueError(f"body {model.body(body).name!r} is not a pole along its axis")
        if np.any(model.dof_armature) or np.any(model.dof_damping):
            raise ValueError("the planar chain has no joint armature or damping")
        return cls(
            cart_mass=float(model.body_mass[model.body("cart").id]),
            masses=tuple(float(model.body_mass[b]) for b in ids),
            centres=tuple(float(model.body_ipos[b, 2]) for b in ids),
            inertias=tuple(float(model.body_inertia[b, 1]) for b in ids),
            links=tuple(float(model.body_pos[b, 2]) for b in ids[1:]),
            gravity=float(-model.opt.gravity[2]),
        )

    def acceleration(self, q: Any, qd: Any, tau: Any, *, xp: Any) -> Any:
        """Joint accelerations qdd with M(q) qdd + h(q, qd) = tau, in closed form.

        In absolute pole angles phi_j (the sums of the hinge angles up to j), with
        A_j = sum_i m_i r_ij and B_jk = sum_i m_i r_ij r_ik, where r_ij is pole i's lever on
        phi_j (the link length L_j below pole i, its centre distance at j = i, 0 above):

            M_xx = m_cart + sum_i m_i       M_xj = A_j cos phi_j
            M_jk = B_jk cos(phi_j - phi_k) + I_j delta_jk
            h_x  = -sum_j A_j sin(phi_j) phi_j'^2
            h_j  = sum_k B_jk sin(phi_j - phi_k) phi_k'^2 - g A_j sin phi_j

        and the hinge coordinates by phi = S theta (S lower-triangular ones): M_q = P^T M P,
        h_q = P^T h with P = diag(1, S). A few dozen operations where a general rigid-body
        pipeline takes hundreds: what makes RK4 at a fine step affordable.
        """
        n = len(self.masses)
        lever = [
            [self.links[j] if j < i else self.centres[i] if j == i else 0.0 for j in range(n)]
            for i in range(n)
        ]
        a = [sum(self.masses[i] * lever[i][j] for i in range(n)) for j in range(n)]
        b = [
            [sum(self.masses[i] * lever[i][j] * lever[i][k] for i in range(n)) for k in range(n)]
            for j in range(n)
        ]
        phi = xp.cumsum(q[1:])
        phid = xp.cumsum(qd[1:])
        sin, cos = xp.sin(phi), xp.cos(phi)
        total = self.cart_mass + sum(self.masses)
        rows = [[total] + [a[j] * cos[j] for j in range(n)]]
        for j in range(n):
            rows.append(
                [a[j] * cos[j]]
                + [
                    b[j][k] * xp.cos(phi[j] - phi[k]) + (self.inertias[j] if j == k else 0.0)
                    for k in range(n)
                ]
            )
        bias = [-sum(a[j] * sin[j] * phid[j] ** 2 for j in range(n))]
        for j in range(n):
            centrifugal = sum(b[j][k] * xp.sin(phi[j] - phi[k]) * phid[k] ** 2 for k in range(n))
            bias.append(centrifugal - self.gravity * a[j] * sin[j])

        def entry(value):
            return xp.asarray(value, dtype=q.dtype)

        mass_abs = xp.stack([xp.stack([entry(m) for m in row]) for row in rows])
        # P maps hinge coordinates to absolute ones; P^T maps absolute forces back.
        p = np.tril(np.ones((n + 1, n + 1)))
        p[1:, 0], p[0, 1:] = 0.0, 0.0
        mass_q = p.T @ mass_abs @ p
        force = tau - p.T @ xp.stack([entry(h) for h in bias])
        return xp.linalg.solve(mass_q, force)


def pole_names(model: mujoco.MjModel) -> list[str]:
    """The pole bodies of a testbed model, from the cart outward."""
    names = [model.body(i).name for i in range(model.nbody)]
    return [n for n in names if n.startswith("pole")]


def apply_body_mismatch(model: mujoco.MjModel, lab: LabEffects) -> mujoco.MjModel:
    """A copy of a testbed's MuJoCo model with the lab's cart and pole masses, pole lengths
    and centres of mass. Each pole's inertia about its centre of mass scales as a rod's,
    with its mass and the square of its length; a pole's child hinge moves with its length;
    the capsules are resized to match (they only draw). Derived constants are recomputed."""
    model = copy.deepcopy(model)
    cart = model.body("cart").id
    model.body_mass[cart] *= lab.cart_mass_scale
    model.body_inertia[cart] *= lab.cart_mass_scale
    for name in pole_names(model):
        body = model.body(name).id
        model.body_mass[body] *= lab.pole_mass_scale
        model.body_inertia[body] *= lab.pole_mass_scale * lab.pole_length_scale**2
        model.body_ipos[body] *= lab.pole_com_scale
        geom = model.geom(name).id
        model.geom_size[geom, 1] *= lab.pole_length_scale
        model.geom_pos[geom] *= lab.pole_length_scale
        if model.body_parentid[body] != cart:
            model.body_pos[body] *= lab.pole_length_scale
    mujoco.mj_setConst(model, mujoco.MjData(model))
    return model


__all__ = ["ChainBody", "apply_body_mismatch", "pole_names"]
