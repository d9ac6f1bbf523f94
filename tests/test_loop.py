"""The sim2real loop: budget, counters, refits, exact resume, and held-out evaluation."""

import dataclasses
import math

import jax
import numpy as np
import pytest
from brax.envs.wrappers.training import Wrapper

from dynamics_models import ModelConfig
from pods.config import HDSConfig
from sim2real import make_testbed
from sim2real.evaluation import evaluate_sim_and_real, gap_closure, normalized_score, seed_streams
from sim2real.loop import LoopCheckpoint, run_loop, run_loop_seeds
from sim2real.loop_config import LoopConfig
from sim2real.real_system import RealSystem

HORIZON = 10
CONFIG = HDSConfig(
    num_epochs=4, num_trajectories=4, beta=0.5, hidden_sizes=(16,), minibatch_size=16
)
# 4 initial episodes, then one collection of 2 before epoch 2: 60 transitions, the budget.
LOOP = LoopConfig(budget=60, initial_trajectories=4, collect_every=2, collect_trajectories=2)
MODEL = ModelConfig(kind="mlp", width=16, depth=1, max_steps=200, eval_every=100)


def balance_testbed(variant: str):
    """The loop's 10-step balance testbed, on the `chain` backend that runs use by default (its
    programs compile in a fraction of the generalized pipeline's time)."""
    return make_testbed(f"cartpole_balance_{variant}", episode_length=HORIZON, backend="chain")


class RecordResets(Wrapper):
    """Records the observation of every reset, also inside jit and vmap."""

    def __init__(self, env, record: list):
        super().__init__(env)
        self.record = record

    def reset(self, rng):
        state = self.env.reset(rng)
        jax.debug.callback(lambda obs: self.record.append(np.asarray(obs)), state.obs)
        return state


def run(record: list, **kwargs):
    sim = RecordResets(balance_testbed("sim"), record)
    real_testbed = balance_testbed("real")
    real = RealSystem(RecordResets(real_testbed, record), budget=LOOP.budget)
    states, datasets = {}, []
    result = run_loop(
        CONFIG,
        LOOP,
        MODEL,
        sim,
        real,
        seed_streams(0)[0],
        checkpoint_fn=lambda state, metrics: states.setdefault(int(state.epoch), state),
        data_fn=datasets.append,
        **kwargs,
    )
    return result, real, states, datasets


@pytest.fixture(scope="module")
def tiny_loop():
    record = []
    result, real, states, datasets = run(record)
    return dict(result=result, real=real, states=states, datasets=datasets, record=record)


def test_loop_config_rejects_bad_values_and_plans_rounds():
    with pytest.raises(ValueError, match=r"LoopConfig.collect_noise must be .*got -0.1"):
        LoopConfig(collect_noise=-0.1)
    with pytest.raises(ValueError, match=r"LoopConfig.initial_data must be .*'sim'"):
        LoopConfig(initial_data="sim")
    with pytest.raises(ValueError, match=r"budget=100 real transitions cannot hold"):
        LoopConfig(budget=100, initial_trajectories=2).rounds(horizon=100)
    config = LoopConfig(
        budget=1000, initial_trajectories=2, collect_every=3, collect_trajectories=3
    )
    assert config.rounds(horizon=100) == 2  # 200 initial + 2 * 300 <= 1000 < 200 + 3 * 300
    assert [config.rounds_before(e, 100) for e in range(10)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]


def test_loop_reports_every_metric_and_spends_the_budget_exactly(tiny_loop):
    result, real = tiny_loop["result"], tiny_loop["real"]
    metrics = result.metrics
    assert len(metrics) == CONFIG.num_epochs
    for key in (
        "train/return",
        "train/return_model",
        "train/return_sim",
        "train/distill_loss",
        "train/sim_steps",
        "train/model_steps",
        "train/wall_clock_s",
        "model/validation_loss",
    ):
        assert all(math.isfinite(m[key]) for m in metrics), key
    assert [m["real/transitions"] for m in metrics] == [40, 40, 60, 60]
    assert [m["real/rounds"] for m in metrics] == [0, 0, 1, 1]
    # The counter equals what was stored, and the system refuses anything past the budget.
    assert real.transitions == result.dataset.n_transitions == LOOP.budget
    assert [d.n_transitions for d in tiny_loop["datasets"]] == [40, 60]
    with pytest.raises(ValueError, match="budget of 60 transitions exceeded"):
        real.collect(jax.random.PRNGKey(0), 1)


@pytest.mark.slow  # a second compile of the loop: ~1 min on 2 cores
def test_loop_resumes_exactly_from_a_checkpoint(tiny_loop):
    """Killed after epoch 3 (its model not saved): resuming refits the same model and runs
    the same last epoch."""
    uninterrupted = tiny_loop["result"]
    resume = LoopCheckpoint(tiny_loop["datasets"][-1], model=None)
    resumed, real, _, _ = run([], initial_state=tiny_loop["states"][3], resume=resume)
    assert real.transitions == LOOP.budget
    assert len(resumed.metrics) == 1
    expected = {k: v for k, v in uninterrupted.metrics[-1].items() if k != "train/wall_clock_s"}
    got = {k: v for k, v in resumed.metrics[0].items() if k != "train/wall_clock_s"}
    assert got == pytest.approx(expected, rel=0, abs=0)
    jax.tree.map(np.testing.assert_array_equal, resumed.params, uninterrupted.params)


@pytest.mark.slow  # 58 s on 2 cores: kept out of `make test` to hold it under 15 minutes
def test_seeds_of_one_loop_as_one_program_are_each_seed_run_alone(tiny_loop):
    """Seeds 0 and 1, each with its own real system, data and model, their HDS epochs as
    one program: seed 0 is the loop run alone (float32; some sums are taken in another
    order), and each spends its own budget exactly."""
    sim = balance_testbed("sim")
    reals = [RealSystem(balance_testbed("real"), budget=LOOP.budget) for _ in range(2)]
    datasets = [[], []]
    results = run_loop_seeds(
        CONFIG,
        LOOP,
        MODEL,
        sim,
        reals,
        [seed_streams(0)[0], seed_streams(1)[0]],
        data_fns=[datasets[0].append, datasets[1].append],
    )
    assert [real.transitions for real in reals] == [LOOP.budget, LOOP.budget]
    assert [len(d) for d in datasets] == [2, 2]  # round 0 and the collection before epoch 2
    # Round 0's random commands are the seed's alone: the same data.
    np.testing.assert_array_equal(
        datasets[0][0].observations, tiny_loop["datasets"][0].observations
    )
    alone = tiny_loop["result"]
    for got, expected in zip(results[0].metrics, alone.metrics, strict=True):
        got = {k: v for k, v in got.items() if k != "train/wall_clock_s"}
        expected = {k: v for k, v in expected.items() if k != "train/wall_clock_s"}
        assert got == pytest.approx(expected, rel=1e-3, abs=1e-4)
    assert results[1].metrics[0]["train/return"] != results[0].metrics[0]["train/return"]


def test_evaluation_never_starts_from_a_training_state(tiny_loop):
    """Every initial state training saw (sim, model and real episodes) differs from every
    held-out evaluation state."""
    training = np.concatenate([r.reshape(-1, r.shape[-1]) for r in tiny_loop["record"]])
    result = tiny_loop["result"]
    evaluated = []
    sim = RecordResets(balance_testbed("sim"), evaluated)
    real = RecordResets(balance_testbed("real"), evaluated)
    returns = evaluate_sim_and_real(
        result.make_policy, result.params, sim, real, seed_streams(0)[1], 8
    )
    assert set(returns) == {"sim", "real"}
    held_out = np.concatenate([r.reshape(-1, r.shape[-1]) for r in evaluated])
    assert len(held_out) >= 16 and len(training) >= 4 * CONFIG.num_trajectories
    distances = np.abs(held_out[:, None, :] - training[None, :, :]).max(-1)
    assert distances.min() > 1e-6


def test_scores():
    assert normalized_score(5.0, random=1.0, oracle=9.0) == pytest.approx(0.5)
    assert normalized_score(9.0, random=1.0, oracle=9.0) == 1.0
    assert gap_closure(4.0, sim_only=2.0, oracle=6.0) == pytest.approx(0.5)
    assert math.isnan(normalized_score(1.0, random=3.0, oracle=3.0))


@pytest.mark.slow  # one more compile; beta = 0 reproducing PODS is tested in test_hds
def test_beta_zero_takes_no_real_transition():
    """HDS without model rollouts is PODS: the loop records nothing real."""
    real = RealSystem(balance_testbed("real"), budget=0)
    sim = balance_testbed("sim")
    config = dataclasses.replace(CONFIG, beta=0.0, num_epochs=1)
    result = run_loop(config, LOOP, MODEL, sim, real, jax.random.PRNGKey(0))
    assert real.transitions == 0 and result.dataset is None
    assert result.metrics[0]["real/transitions"] == 0


def test_the_loop_trains_in_the_simulator_identified_from_round_0s_episodes():
    """With `identify_fn`, HDS's sim rollouts run in the simulator it returns, from round 0's
    episodes alone; the nominal sim is never stepped."""
    nominal, identified, given = [], [], []

    def identify_fn(data):
        given.append(data)
        return RecordResets(balance_testbed("real"), identified)

    sim = RecordResets(balance_testbed("sim"), nominal)
    real = RealSystem(balance_testbed("real"), budget=LOOP.budget)
    config = dataclasses.replace(CONFIG, num_epochs=3)
    datasets = []
    result = run_loop(
        config,
        LOOP,
        MODEL,
        sim,
        real,
        seed_streams(0)[0],
        data_fn=datasets.append,
        identify_fn=identify_fn,
    )
    (data,) = given
    assert data.n_trajectories == LOOP.initial_trajectories
    np.testing.assert_array_equal(data.observations, datasets[0].observations)
    # The collection before epoch 2 added episodes, which the identification never saw.
    assert result.dataset.n_trajectories > data.n_trajectories
    # The sim group and the model env (which resets through its simulator) both use it.
    assert identified and not nominal


def test_identification_needs_the_real_data_of_model_rollouts():
    real = RealSystem(balance_testbed("real"), budget=LOOP.budget)
    config = dataclasses.replace(CONFIG, beta=0.0)
    with pytest.raises(ValueError, match=r"identify_fn needs the real data that only beta > 0"):
        run_loop(
            config,
            LOOP,
            MODEL,
            balance_testbed("sim"),
            real,
            jax.random.PRNGKey(0),
            identify_fn=lambda data: balance_testbed("real"),
        )
    assert real.transitions == 0


def test_the_loop_runs_against_a_gymnasium_real_system_whose_episodes_end_early():
    """gymnasium's MuJoCo InvertedPendulum-v5 as the real system, mapped to the cart-pole's
    layout: its episodes terminate once the pole leans past 0.2 rad, so the real data holds
    episodes that ended early. Their transitions are counted and kept, the model learns from
    them, and HDS runs its epochs (the sim env is the tiny loop's: its epoch is compiled)."""
    import gymnasium

    from sim2real.gym_adapter import GymAdapter

    adapter = GymAdapter(
        observation=lambda o: np.array([o[0], np.cos(o[1]), np.sin(o[1]), o[2], o[3]]),
        action=lambda u: 3.0 * np.clip(u, -1, 1),
        observation_size=5,
    )
    real = RealSystem(
        gymnasium.make("InvertedPendulum-v5"), LOOP.budget, adapter=adapter, episode_length=HORIZON
    )
    sim = balance_testbed("sim")
    result = run_loop(CONFIG, LOOP, MODEL, sim, real, seed_streams(0)[0])
    data = result.dataset
    assert data.valid is not None and not data.valid.all()  # some episodes ended early
    assert real.transitions == data.n_transitions < LOOP.budget
    assert len(result.metrics) == CONFIG.num_epochs
    assert all(math.isfinite(m["model/validation_loss"]) for m in result.metrics)
    assert all(math.isfinite(m["train/return"]) for m in result.metrics)
