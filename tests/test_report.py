import json

import numpy as np
import pytest

from sim2real import report


def test_testbed_report_shows_a_growing_gap_and_writes_json(tmp_path, capsys):
    out = tmp_path / "report.json"
    # One system's tasks: every task runs the same code, and the second reuses the first's
    # compiled rollouts through the persistent cache (their steps are the same program).
    tasks = ["cartpole_balance", "cartpole_swingup"]
    assert report.main(["--trajectories", "4", "--tasks", *tasks, "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert set(written) == set(tasks)
    for entry in written.values():
        for variant in report.REAL_SYSTEMS:
            cart = [entry["divergence_rms"][variant][k]["x"] for k in ("1", "10", "50")]
            assert 0 < cart[0] < cart[1] < cart[2]
        for variant in ("sim", *report.REAL_SYSTEMS):
            assert np.isfinite(entry["zero_policy_return"][variant]["mean"])
        # The two engines of the lab agree (float32 rounding, far below how far the lab
        # drifts from sim) on every state variable, and on the zero policy's return.
        drift = entry["mujoco_drift_rms"]["50"]
        lab_gap = entry["divergence_rms"]["lab"]["50"]
        assert all(0 < drift[v] < 1e-3 * lab_gap[v] for v in drift)
        zero = entry["zero_policy_return"]
        assert zero["lab_mujoco"]["mean"] == pytest.approx(zero["lab"]["mean"], abs=1e-3)
        assert entry["lab_step"] == {
            "timestep": 0.005,
            "integrator": "rk4",
            "twin_dtype": "float32",
        }
    balance = written["cartpole_balance"]["zero_policy_return"]
    # Undamped, a fallen `sim` pole keeps swinging back up; in `real` and the lab the damping
    # lets it settle hanging down, so the same zero policy scores far lower there.
    assert balance["real"]["mean"] < balance["sim"]["mean"] - 10
    assert balance["lab"]["mean"] < balance["sim"]["mean"] - 10
    printed = capsys.readouterr().out
    assert "cartpole_swingup" in printed and "RMS |real - sim|" in printed
    assert "RMS |lab_mujoco - lab|: MuJoCo C vs the float32 twin, rk4 at 5 ms" in printed


def test_bad_trajectory_count_is_rejected(capsys):
    with pytest.raises(SystemExit):
        report.main(["--trajectories", "0"])
    assert "--trajectories must be positive, got 0" in capsys.readouterr().err
