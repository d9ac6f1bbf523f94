"""Scale: seeds trained as one vmapped program, rollouts sharded over devices."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from doubles import LinearEnv

from pods.config import PODSConfig
from pods.sharding import check_divisible, trajectory_mesh
from pods.train import train, train_seeds

TESTS = Path(__file__).resolve().parent

# Second order with exploration noise and an elite: every random draw and every branch of an
# epoch takes part.
CONFIG = PODSConfig(
    num_epochs=8,
    num_trajectories=8,
    order=2,
    exploration_noise=0.3,
    exploration_decay=0.9,
    elite_fraction=0.5,
    hidden_sizes=(16,),
    minibatch_size=16,
    float64=True,
)


def linear_env(dtype):
    return LinearEnv([[1.0, 0.1], [0.0, 1.0]], [[0.0], [0.1]], episode_length=10, dtype=dtype)


def untimed(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "train/wall_clock_s"} for m in metrics]


def assert_close_metrics(got: list[dict], expected: list[dict], rtol: float) -> None:
    assert len(got) == len(expected)
    for a, b in zip(untimed(got), untimed(expected), strict=True):
        assert a.keys() == b.keys()
        np.testing.assert_allclose(list(a.values()), list(b.values()), rtol=rtol, atol=rtol)


@pytest.fixture(scope="module")
def seed_batch():
    """Seeds 0-2 as one program, seed 1 resumed from its own checkpoint after 3 epochs."""
    with jax.enable_x64(True):
        env = linear_env(jnp.float64)
        keys = [jax.random.PRNGKey(seed) for seed in range(3)]
        checkpoints = []
        train(
            dataclasses.replace(CONFIG, num_epochs=3),
            env,
            keys[1],
            checkpoint_fn=lambda state, metrics: checkpoints.append(state),
        )
        reported = []
        _, params, metrics = train_seeds(
            CONFIG,
            env,
            keys,
            initial_states=[None, checkpoints[-1], None],
            progress_fn=lambda s, epoch, metrics: reported.append((s, epoch)),
        )
        alone = [train(CONFIG, env, key) for key in keys]
    return params, metrics, reported, alone


def test_each_seed_of_a_batch_is_the_seed_trained_alone_to_1e_9_in_float64(seed_batch):
    params, metrics, _, alone = seed_batch
    for s in (0, 2):
        assert_close_metrics(metrics[s], alone[s][2], rtol=1e-9)
    # Seed 1 resumed after epoch 3: the batch ran its epochs 3-7 alone until it caught up.
    assert_close_metrics(metrics[1], alone[1][2][3:], rtol=1e-9)
    for s in range(3):
        for got, expected in zip(
            jax.tree.leaves(params[s]), jax.tree.leaves(alone[s][1]), strict=True
        ):
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_a_seed_ahead_of_the_batch_is_reported_only_for_its_own_epochs(seed_batch):
    _, _, reported, _ = seed_batch
    epochs = {s: [epoch for seed, epoch in reported if seed == s] for s in range(3)}
    assert epochs == {0: list(range(8)), 1: list(range(3, 8)), 2: list(range(8))}


def test_a_batch_takes_one_initial_state_per_seed():
    with pytest.raises(ValueError, match="2 initial states for 3 seeds"):
        train_seeds(
            CONFIG,
            linear_env(jnp.float32),
            [jax.random.PRNGKey(s) for s in range(3)],
            initial_states=[None, None],
        )


def test_one_device_makes_no_mesh_and_any_batch_splits():
    assert trajectory_mesh(jax.local_devices()[:1]) is None
    check_divisible(1, {"PODSConfig.num_trajectories=3": 3})
    with pytest.raises(ValueError, match="num_trajectories=3 does not split over the 2 devices"):
        check_divisible(2, {"PODSConfig.num_trajectories=3": 3})


SHARDED = textwrap.dedent(
    """
    import dataclasses, json, os, sys
    sys.path.insert(0, {tests!r})
    import jax, jax.numpy as jnp
    from doubles import LinearEnv
    from pods.config import HDSConfig
    from pods.hds import train as train_hds
    from pods.config import PODSConfig
    from pods.train import train, train_seeds

    assert jax.local_device_count() == 2, jax.devices()
    sim = LinearEnv([[1.0, 0.1], [0.0, 1.0]], [[0.0], [0.1]], episode_length=10)
    model = LinearEnv([[1.0, 0.12], [0.0, 0.98]], [[0.0], [0.1]], episode_length=10)
    config = {config}
    one = jax.local_devices()[:1]
    key = jax.random.PRNGKey(0)
    hds = HDSConfig(**dataclasses.asdict(config), beta=0.5)
    if {hds}:
        out = {{
            "one_hds": train_hds(hds, (sim, model), key, devices=one)[2],
            "sharded_hds": train_hds(hds, (sim, model), key)[2],
        }}
    else:
        out = {{
            "one": train(config, sim, key, devices=one)[2],
            "sharded_seeds": train_seeds(config, sim, [key, jax.random.PRNGKey(1)])[2],
        }}
    try:
        train(dataclasses.replace(config, num_trajectories=5), sim, key)
    except ValueError as err:
        out["error"] = str(err)
    try:
        train_hds(HDSConfig(**dataclasses.asdict(config), beta=0.375), (sim, model), key)
    except ValueError as err:
        out["hds_error"] = str(err)
    print(json.dumps(out))
    """
)


def on_two_devices(*, hds: bool) -> dict:
    """The script's results on two forced host devices: PODS seeds 0 and 1 as one sharded
    batch and PODS seed 0 on one device, or HDS at beta 0.5 sharded and on one device."""
    config = dataclasses.replace(CONFIG, float64=False, num_epochs=4, hidden_sizes=(8,))
    script = SHARDED.format(tests=str(TESTS), config=repr(config), hds=hds)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def two_devices():
    return on_two_devices(hds=False)


def test_a_seed_batch_sharded_over_two_devices_equals_one_device_to_float32_rounding(
    two_devices,
):
    """Split over two devices, the sums over the rollouts are taken in another order: the
    metrics agree to float32 rounding, 1e-5. Seed 0 of the sharded batch is seed 0 alone."""
    assert_close_metrics(two_devices["sharded_seeds"][0], two_devices["one"], rtol=1e-5)


# Slow: the same sharding of the rollouts as PODS's, in each of HDS's two groups.
@pytest.mark.slow
def test_hds_groups_sharded_over_two_devices_equal_one_device():
    results = on_two_devices(hds=True)
    assert_close_metrics(results["sharded_hds"], results["one_hds"], rtol=1e-5)


def test_a_batch_that_does_not_split_over_the_devices_is_refused_in_one_line(two_devices):
    assert two_devices["error"] == (
        "PODSConfig.num_trajectories=5 does not split over the 2 devices the rollouts are "
        "sharded over: give a multiple of 2, or fewer devices"
    )
    # HDS's two groups are split separately: 8 at beta 0.375 is 3 in the model, 5 in the sim.
    assert two_devices["hds_error"] == (
        "HDSConfig.num_trajectories=8 at beta=0.375 (model group 3) does not split over the 2 "
        "devices the rollouts are sharded over: give a multiple of 2, or fewer devices"
    )
