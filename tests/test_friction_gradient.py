"""The slider friction's surrogate derivative (`sim2real.lab.FrictionGradient`): the lab's
rollouts are unchanged to the bit, its gradients are the surrogate's, and with them the
action improvement raises the lab's swing-up return where the law's own derivative stalls
at rest (docs/research-log/2026-12-07-stiction-gradients.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pods.derivatives import action_gradient
from pods.feedback import improve_with_feedback
from pods.rollout import episode_of_actions, reset_batch
from pods.step_size import step_size_grid
from sim2real import make_testbed
from sim2real.lab import FrictionGradient, LabEffects, slider_force
from sim2real.testbed_spec import Physics

HORIZON = 20
STARTS = 2


@pytest.fixture(scope="module")
def lab_pair():
    """The lab swing-up with the law's derivative and with the surrogate's, its starts, and
    each env's compiled episode and improvement step (one compilation per env)."""
    envs = {
        name: make_testbed(
            "cartpole_swingup_lab",
            backend="chain",
            episode_length=HORIZON,
            friction_gradient=gradient,
        )
        for name, gradient in (("law", None), ("surrogate", FrictionGradient()))
    }
    states = reset_batch(envs["law"], jax.random.PRNGKey(0), STARTS)
    step_sizes = step_size_grid(1.0, 1e-3, 8)
    compiled = {
        name: (
            jax.jit(jax.vmap(lambda s, a, env=env: episode_of_actions(env, s, a))),
            jax.jit(lambda s, a, o, env=env: improve_with_feedback(env, s, a, o, step_sizes)),
        )
        for name, env in envs.items()
    }
    return envs, states, compiled


def test_the_rollout_is_the_same_to_the_bit(lab_pair):
    envs, states, compiled = lab_pair
    actions = jax.random.uniform(jax.random.PRNGKey(1), (STARTS, HORIZON, 1), minval=-1, maxval=1)
    law, surrogate = (compiled[name][0](states, actions) for name in ("law", "surrogate"))
    np.testing.assert_array_equal(np.asarray(law.observations), np.asarray(surrogate.observations))
    np.testing.assert_array_equal(np.asarray(law.rewards), np.asarray(surrogate.rewards))
    # Also the value a gradient is taken of: the surrogate reaches the derivative alone.
    state = jax.tree.map(lambda x: x[0], states)
    values = [action_gradient(envs[name], state, actions[0])[0] for name in envs]
    assert float(values[0]) == float(values[1])


def test_the_return_gradient_is_the_surrogates_at_rest(lab_pair):
    envs, states, _ = lab_pair
    state = jax.tree.map(lambda x: x[0], states)
    rest = jnp.zeros((HORIZON, 1))
    law, surrogate = (action_gradient(envs[name], state, rest)[1] for name in ("law", "surrogate"))
    assert np.all(np.isfinite(surrogate))
    # The law's friction slope at rest acts as hundreds of N s/m of damping, so a command
    # barely moves the linearized cart; through the surrogate it does.
    assert float(jnp.linalg.norm(surrogate)) > 3 * float(jnp.linalg.norm(law))


def test_two_improvement_steps_raise_the_labs_return_only_through_the_surrogate(lab_pair):
    _, states, compiled = lab_pair
    returns = {}
    for name, (episodes, improve) in compiled.items():
        actions = jnp.zeros((STARTS, HORIZON, 1))
        for _ in range(2):
            step = improve(states, actions, episodes(states, actions).observations)
            actions = step.actions
        start = float(jnp.mean(episodes(states, jnp.zeros_like(actions)).value))
        returns[name] = (start, float(jnp.mean(episodes(states, actions).value)))
    (law_start, law_end), (_, surrogate_end) = returns["law"], returns["surrogate"]
    assert surrogate_end - law_start > 5 * max(law_end - law_start, 0.01), returns


def test_the_parameters_derivative_stays_the_laws():
    """System identification differentiates the force with respect to the physics; the
    MuJoCo C engine's plain floats take the law."""
    physics = {k: jnp.asarray(v) for k, v in vars(Physics.lab()).items()}
    lab = LabEffects()

    def force(p, x, v, gradient):
        return slider_force(p, lab, x, v, xp=jnp, gradient=gradient)

    by_law = jax.grad(force, argnums=(0, 2))(physics, 0.013, 0.002, None)
    by_surrogate = jax.grad(force, argnums=(0, 2))(physics, 0.013, 0.002, FrictionGradient())
    for name in physics:
        assert float(by_law[0][name]) == float(by_surrogate[0][name]), name
    assert abs(float(by_law[1])) > 10 * abs(float(by_surrogate[1]))
    plain = {k: float(v) for k, v in physics.items()}
    law = slider_force(plain, lab, 0.013, 0.002, xp=np)
    assert slider_force(plain, lab, 0.013, 0.002, xp=np, gradient=FrictionGradient()) == law


@pytest.mark.parametrize(
    "kwargs, shown",
    [
        (dict(friction_velocity=0.0), "0.0"),
        (dict(friction_velocity=-0.1), "-0.1"),
        (dict(friction_velocity=float("nan")), "nan"),
        (dict(stiction="no"), "'no'"),
        (dict(cogging=1), "1"),
    ],
)
def test_a_bad_value_raises_one_line_naming_it(kwargs, shown):
    with pytest.raises(ValueError) as error:
        FrictionGradient(**kwargs)
    message = str(error.value)
    assert "\n" not in message and message.endswith(shown) and next(iter(kwargs)) in message


def test_a_testbed_refuses_what_is_not_a_friction_gradient():
    with pytest.raises(ValueError, match="friction_gradient must be None or a FrictionGradient"):
        make_testbed("cartpole_swingup_lab", backend="chain", friction_gradient=0.1)
