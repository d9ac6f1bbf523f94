"""HDS through the command line: real data, the model and the oracle's score in one run
directory. A file of its own, so the test runner can give it its own worker."""

import json
from pathlib import Path

import numpy as np
import pytest
from test_experiments import assert_replays_its_summary, run_train

from experiments.deploy import load_policy

HDS_TINY = [
    "algo=hds",
    "algo.num_epochs=4",
    "model=mlp",
    "model.width=16",
    "model.depth=1",
    "model.max_steps=200",
    "real.budget=64",
    "real.initial_trajectories=4",
    "real.collect_every=2",
    "real.collect_trajectories=2",
]


def test_hds_run_with_comparisons_writes_data_model_and_scores(tmp_path):
    """`make run`'s shape at a tiny size: HDS with real data and the oracle in one run
    directory; every run scored against the oracle."""
    run_dir = tmp_path / "hds"
    result = run_train(run_dir, *HDS_TINY, "run.compare=[oracle]")
    for name in ("hds", "oracle", "score", "real data"):
        assert name in result.stdout
    for name in (
        "summary.json",
        "metrics.jsonl",
        "checkpoints/latest.msgpack",
        "artifacts/real_transitions.npz",
        "artifacts/model.eqx",
        "artifacts/model.json",
        "oracle/summary.json",
    ):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    # 4 initial episodes of 8 steps, one collection of 2 before epoch 2: 48 of the 64 allowed.
    assert summary["real/transitions"] == 48 and summary["hds/beta"] == 0.5
    assert summary["model/kind"] == "mlp"
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["real/transitions"] for r in records] == [32, 32, 48, 48]
    assert all(r["model/validation_loss"] is not None for r in records)
    oracle = json.loads((run_dir / "oracle" / "summary.json").read_text())
    assert oracle["eval/score_real"] == 1.0 and oracle["real/transitions"] == 0
    expected = (summary["eval/return_real"] - summary["eval/return_random_real"]) / (
        oracle["eval/return_real"] - oracle["eval/return_random_real"]
    )
    assert summary["eval/score_real"] == pytest.approx(expected)
    # A compared run's folder is a run directory of its own: its policy loads from it.
    loaded = load_policy(run_dir / "oracle")
    assert loaded.config.algo.name == "oracle" and loaded.epoch == 4
    # Both policies deploy as their runs played them.
    assert_replays_its_summary(run_dir)
    assert_replays_its_summary(run_dir / "oracle")
    assert "algo=oracle" in (run_dir / "oracle" / ".hydra" / "overrides.yaml").read_text()


# Slow: the fast suite has the batched loop's equality (tests/test_loop.py) and the launcher's
# command line (tests/test_experiments.py); this is the two together.
@pytest.mark.slow
def test_an_hds_seed_batch_writes_each_seeds_data_model_and_run(tmp_path):
    """`launcher=seed_batch` on HDS: seeds 0 and 1 train their epochs as one program, each
    with its own real budget, data and model, into its own ordinary run directory."""
    sweep_dir = tmp_path / "batch"
    result = run_train(
        sweep_dir,
        *HDS_TINY,
        "seed=0,1",
        "launcher=seed_batch",
        "hydra.sweep.subdir=seed${seed}",
        multirun=True,
    )
    assert "2 seeds in one program" in result.stdout + result.stderr
    observations = []
    for seed in (0, 1):
        run_dir = sweep_dir / f"seed{seed}"
        for name in ("summary.json", "artifacts/real_transitions.npz", "artifacts/model.eqx"):
            assert (run_dir / name).is_file(), name
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["seed"] == seed and summary["real/transitions"] == 48
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["real/transitions"] for r in records] == [32, 32, 48, 48]
        observations.append(np.load(run_dir / "artifacts" / "real_transitions.npz")["observations"])
    # Each seed drew its own real episodes.
    assert not np.array_equal(observations[0], observations[1])


# Slow: HDS's compile; the fast suite reaches the same env by the same id through deploy
# (tests/test_experiments_real.py) and refuses its other layout in one line.
@pytest.mark.slow
def test_hds_collects_from_a_users_own_gymnasium_env_named_by_its_id(tmp_path):
    run_dir = tmp_path / "gym"
    run_train(
        run_dir,
        *HDS_TINY,
        "real.engine=gym",
        "real.gym_id=user_cartpole:UserCartPole-v0",
        environment={"PYTHONPATH": str(Path(__file__).parent)},
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["real/engine"] == "gym" and summary["real/profile"] is None
    assert summary["real/system"] == "UserCartPole-v0" and summary["real/transitions"] == 48
    assert summary["train/env"] == "cartpole_balance_sim + model"
    assert 0.0 <= summary["eval/solved_real"] <= 1.0


@pytest.mark.slow  # collection, the lab family's fit, the model and HDS: four compiles
def test_hds_sysid_trains_in_the_identified_simulator_and_resumes_on_its_record(tmp_path):
    run_dir = tmp_path / "hds_sysid"
    lab_family = [
        *(o for o in HDS_TINY if o != "algo=hds"),
        "algo=hds_sysid",
        "sysid.family=lab",
        "sysid.max_delay_steps=2",
        "sysid.num_steps=5",
        "run.animation=false",
    ]
    run_train(run_dir, *lab_family)
    path = run_dir / "artifacts" / "sysid.json"
    identified = json.loads(path.read_text())
    # Identified from round 0's 4 episodes of 8 steps; the loop then collected 2 more.
    assert identified["family"] == "lab" and identified["real_transitions"] == 32
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["real/transitions"] == 48 and summary["sysid/family"] == "lab"
    assert summary["train/env"].endswith(", identified + model")
    assert summary["sysid/latency_steps"] == identified["lab"]["latency_steps"]
    # Values no fit would find: a continued run that shows them trained on the record.
    identified["lab"]["motor_time_constant"] = 0.0123
    path.write_text(json.dumps(identified))
    resumed = run_train(run_dir, *lab_family, "algo.num_epochs=5")
    assert "resuming" in resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    # Epoch 4 ran after a second collection of 2 episodes: the whole budget of 64.
    assert summary["train/epochs"] == 5 and summary["real/transitions"] == 64
    assert summary["sysid/motor_time_constant"] == 0.0123
