"""HDS: config checks, beta = 0 is PODS, beta = 1 never touches sim, annealing's statistics.

Everything trains on a linear-quadratic test double (compiles in seconds); the cart-pole's
compile cost is PODS's tests' business.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from doubles import LinearEnv

from pods.config import HDSConfig
from pods.hds import make_hds
from pods.hds import train as train_hds
from pods.improve import improve_actions_annealed
from pods.rollout import reset_batch, trajectory_of_actions
from pods.state import init_training_state
from pods.step_size import AnnealingSettings, anneal_step_size
from pods.train import train as train_pods


def sim_env():
    return LinearEnv([[1.0, 0.1], [0.0, 1.0]], [[0.0], [0.1]])


def model_env(scale=1.0):
    return LinearEnv([[1.0, 0.12], [0.0, 0.98]], [[0.0], [0.1 * scale]])


class UntouchableEnv(LinearEnv):
    """The sim env with reset and step that refuse to be traced."""

    def reset(self, rng):
        raise AssertionError("sim.reset was called")

    def step(self, state, action):
        raise AssertionError("sim.step was called")


TINY = dict(
    num_epochs=3,
    num_trajectories=8,
    horizon=5,
    num_step_sizes=4,
    minibatch_size=8,
    distill_passes=1,
    hidden_sizes=(8,),
    exploration_noise=0.3,
    exploration_decay=0.5,
)


@pytest.mark.parametrize(
    "field, value",
    [
        ("beta", 1.5),
        ("beta", -0.1),
        ("beta", float("nan")),
        ("step_size_search", "golden"),
        ("annealing_iterations", 0),
        ("annealing_temperature", 0.0),
        ("annealing_cooling", 1.5),
        ("annealing_proposal_scale", -1.0),
        ("num_trajectories", 0),
    ],
)
def test_bad_config_values_raise_one_line_errors_naming_them(field, value):
    with pytest.raises(ValueError) as error:
        HDSConfig(**{field: value})
    message = str(error.value)
    assert "\n" not in message
    assert f"HDSConfig.{field}" in message
    assert repr(value) in message


def test_group_sizes_round_half_up_to_the_model():
    assert HDSConfig(num_trajectories=8, beta=0.0).group_sizes() == (8, 0)
    assert HDSConfig(num_trajectories=8, beta=0.25).group_sizes() == (6, 2)
    assert HDSConfig(num_trajectories=3, beta=0.5).group_sizes() == (1, 2)
    assert HDSConfig(num_trajectories=8, beta=1.0).group_sizes() == (0, 8)


# The double cart-pole's own settings (solving/double_cartpole.yaml) at TINY's sizes.
FEEDBACK = dict(
    order=2,
    feedback=True,
    gradient_window=None,
    horizon_start=2,
    horizon_growth_epochs=2,
    distill_states="both",
    normalize_observations=False,
)


@pytest.mark.parametrize("settings", [{}, FEEDBACK], ids=["defaults", "feedback"])
def test_beta_zero_reproduces_pods_exactly(settings):
    config = HDSConfig(**TINY, **settings, beta=0.0)
    key = jax.random.PRNGKey(3)
    _, pods_params, pods_history = train_pods(config.pods_config(), sim_env(), key)
    _, hds_params, hds_history = train_hds(config, (sim_env(), model_env()), key)
    assert len(hds_history) == len(pods_history) == 3
    for pods_metrics, hds_metrics in zip(pods_history, hds_history):
        for name, value in pods_metrics.items():
            if name != "train/wall_clock_s":
                assert hds_metrics[name] == value, name
        assert hds_metrics["train/beta"] == 0.0
        assert hds_metrics["train/return_sim"] == hds_metrics["train/return"]
        assert np.isnan(hds_metrics["train/return_model"])
    jax.tree.map(np.testing.assert_array_equal, pods_params, hds_params)


@pytest.mark.parametrize("settings", [{}, FEEDBACK], ids=["defaults", "feedback"])
def test_the_two_group_epoch_with_the_simulator_as_model_is_pods(settings):
    """beta = 1 runs the general two-group code; with sim as the "model" it must be PODS."""
    config = HDSConfig(**TINY, **settings, beta=1.0)
    key = jax.random.PRNGKey(4)
    _, pods_params, pods_history = train_pods(config.pods_config(), sim_env(), key)
    _, hds_params, hds_history = train_hds(
        config, (UntouchableEnv(*model_leaves()), sim_env()), key
    )
    for pods_metrics, hds_metrics in zip(pods_history, hds_history):
        for name, value in pods_metrics.items():
            if name not in ("train/wall_clock_s", "train/sim_steps"):
                np.testing.assert_allclose(hds_metrics[name], value, rtol=1e-5, err_msg=name)
        assert hds_metrics["train/sim_steps"] == 0
        assert hds_metrics["train/model_steps"] == pods_metrics["train/sim_steps"]
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), pods_params, hds_params
    )


def model_leaves():
    env = sim_env()
    return env.A, env.B


def test_beta_one_never_calls_sim_in_the_data_rollouts():
    config = HDSConfig(**TINY, beta=1.0, step_size_search="annealing")
    _, _, history = train_hds(
        config, (UntouchableEnv(*model_leaves()), model_env()), jax.random.PRNGKey(0)
    )
    assert len(history) == 3
    for epoch, metrics in enumerate(history):
        # The exploration noise decays as configured: 0.3 * 0.5^epoch.
        np.testing.assert_allclose(metrics["train/exploration_noise"], 0.3 * 0.5**epoch, rtol=1e-6)
        assert metrics["train/beta"] == 1.0
        assert np.isnan(metrics["train/return_sim"])
        assert metrics["train/return_model"] == metrics["train/return"]
        assert metrics["train/sim_steps"] == 0


@pytest.fixture(scope="module")
def mixed_epoch():
    """The jitted two-group epoch (beta = 0.5, annealing) with the model as a jit argument."""
    config = HDSConfig(**TINY, beta=0.5, step_size_search="annealing", annealing_iterations=3)
    hds = make_hds(config, sim_env(), model_env())
    state = init_training_state(config, sim_env(), hds.network, jax.random.PRNGKey(1))
    return config, state, jax.jit(hds.epoch)


def test_mixed_epoch_reports_both_groups(mixed_epoch):
    config, state, epoch = mixed_epoch
    new_state, metrics = epoch(state, jax.random.PRNGKey(2), model_env())
    metrics = jax.device_get(metrics)
    assert int(new_state.epoch) == 1
    assert float(metrics["train/beta"]) == 0.5
    for name in ("train/return", "train/return_sim", "train/return_model", "train/distill_loss"):
        assert np.isfinite(metrics[name]), name
    np.testing.assert_allclose(
        metrics["train/return"],
        0.5 * (metrics["train/return_sim"] + metrics["train/return_model"]),
        rtol=1e-5,
    )
    assert metrics["train/return_improved"] >= metrics["train/return_data"] - 1e-5


def test_a_refitted_model_reuses_the_compiled_epoch(mixed_epoch):
    _, state, epoch = mixed_epoch
    key = jax.random.PRNGKey(5)
    _, first = epoch(state, key, model_env(1.0))
    _, second = epoch(state, key, model_env(3.0))
    assert epoch._cache_size() == 1
    assert first["train/return_model"] != second["train/return_model"]
    assert first["train/return_sim"] == second["train/return_sim"]


@jax.tree_util.register_pytree_node_class
class GenerousModel(LinearEnv):
    """The model env with 100 reward a step more: its returns dwarf the simulator's."""

    def task_reward(self, obs, action):
        return super().task_reward(obs, action) + 100.0


def test_the_elite_is_chosen_within_each_group():
    """With the model's returns ~500 and the simulator's ~0, an elite across the groups would
    distill model trajectories only (mean ~500); within each group it takes one of each."""
    config = HDSConfig(**TINY, beta=0.5, elite_fraction=0.25)
    hds = make_hds(config, sim_env(), GenerousModel(*model_leaves()))
    state = init_training_state(config, sim_env(), hds.network, jax.random.PRNGKey(1))
    _, metrics = jax.jit(hds.epoch)(state, jax.random.PRNGKey(2))
    model_return, sim_return = (
        float(metrics["train/return_model"]),
        float(metrics["train/return_sim"]),
    )
    assert model_return > 400 and abs(sim_return) < 50
    assert 0.3 * model_return < float(metrics["train/return_distilled"]) < 0.7 * model_return


def _flat_except_start(start_log_alpha):
    # 0 at the chains' start, -1 everywhere else: every first proposal is worse by exactly 1.
    def objective(alphas):
        at_start = jnp.abs(jnp.log(alphas) - start_log_alpha) < 1e-6
        values = jnp.where(at_start, 0.0, -1.0)
        return values, alphas

    return objective


def test_annealing_accepts_worse_step_sizes_with_probability_exp_delta_over_t():
    low, high = 1e-6, 1e6  # wide enough that no proposal is clipped back onto the start
    k, temperature, cooling = 20000, 0.5, 0.5
    result = anneal_step_size(
        _flat_except_start(0.0),
        jax.random.PRNGKey(7),
        k,
        AnnealingSettings(
            step_size_min=low,
            step_size_max=high,
            iterations=2,
            initial_temperature=temperature,
            cooling=cooling,
            proposal_scale=1.0,
        ),
    )
    worse, probability, moved = map(
        np.asarray, (result.worse, result.acceptance_probability, result.moved)
    )
    # Step 0: delta = -1 at T = 0.5.
    assert worse[0].all()
    np.testing.assert_allclose(probability[0], np.exp(-1 / temperature), rtol=1e-6)
    expected = np.exp(-1 / temperature)
    assert abs(moved[0].mean() - expected) < 4 * np.sqrt(expected * (1 - expected) / k)
    # Step 1: the chains still at the start see delta = -1 at T = 0.25; the others a flat -1.
    stayed = ~moved[0]
    assert worse[1][stayed].all() and not worse[1][~stayed].any()
    expected = np.exp(-1 / (temperature * cooling))
    n = stayed.sum()
    assert abs(moved[1][stayed].mean() - expected) < 4 * np.sqrt(expected * (1 - expected) / n)
    assert moved[1][~stayed].all()
    # The best seen is the start, wherever the chain ended.
    np.testing.assert_array_equal(result.value, 0.0)
    np.testing.assert_allclose(np.log(result.step_size), 0.0, atol=1e-6)


def test_annealing_returns_the_best_point_seen_within_the_bounds():
    def bumpy(alphas):
        x = jnp.log(alphas)
        return jnp.sin(3.0 * x) - 0.1 * x**2, alphas

    result = anneal_step_size(
        bumpy,
        jax.random.PRNGKey(8),
        256,
        AnnealingSettings(
            step_size_min=1e-3,
            step_size_max=10.0,
            iterations=12,
            initial_temperature=5.0,
            cooling=0.8,
            proposal_scale=1.0,
        ),
    )
    seen = np.concatenate([np.asarray(result.start_value)[None], np.asarray(result.proposal_value)])
    np.testing.assert_array_equal(result.value, seen.max(axis=0))
    np.testing.assert_allclose(result.value, bumpy(result.step_size)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.aux, result.step_size)
    assert np.all((result.step_size >= 1e-3 * (1 - 1e-6)) & (result.step_size <= 10.0 * (1 + 1e-6)))
    # A hot chain wanders: it visits worse points after better ones, yet returns the best.
    assert np.asarray(result.moved & result.worse).any()


def test_annealed_improvement_never_returns_worse_actions():
    env = sim_env()
    k, horizon = 16, 5
    states = reset_batch(env, jax.random.PRNGKey(9), k)
    actions = jax.random.uniform(jax.random.PRNGKey(10), (k, horizon, 1), minval=-0.9, maxval=0.9)
    start = jax.vmap(lambda s, a: trajectory_of_actions(env, s, a))(states, actions)
    improved = jax.jit(
        lambda states, actions, observations, key: improve_actions_annealed(
            env,
            states,
            actions,
            observations,
            key,
            AnnealingSettings(
                step_size_min=1e-2,
                step_size_max=50.0,  # most of the range overshoots: worse proposals are common
                iterations=6,
                initial_temperature=10.0,
                cooling=0.9,
                proposal_scale=2.0,
            ),
        )
    )(states, actions, start.observations, jax.random.PRNGKey(11))
    replay = jax.vmap(lambda s, a: trajectory_of_actions(env, s, a))(states, improved.actions)
    assert np.all(improved.value_improved >= improved.value)
    np.testing.assert_allclose(replay.value, improved.value_improved, rtol=1e-5, atol=1e-5)
    kept = ~np.asarray(improved.accepted)
    np.testing.assert_array_equal(np.asarray(improved.actions)[kept], np.asarray(actions)[kept])
    np.testing.assert_allclose(improved.observations, replay.observations, rtol=1e-5, atol=1e-5)
    assert improved.accepted.any()
    assert np.all(np.asarray(improved.step_size)[kept] == 0)


def test_hds_config_keeps_pods_fields():
    config = HDSConfig(**TINY, beta=0.25)
    pods_config = config.pods_config()
    for field in dataclasses.fields(pods_config):
        assert getattr(pods_config, field.name) == getattr(config, field.name)
