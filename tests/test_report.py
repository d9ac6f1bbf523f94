import json

import numpy as np
import pytest

from sim2real import report


def test_testbed_report_shows_a_growing_gap_and_writes_json(tmp_path, capsys):
    out = tmp_path / "report.json"
    # One system's tasks: every task runs the same code, and each costs two compiles.
    tasks = ["cartpole_balance", "cartpole_swingup"]
    assert report.main(["--trajectories", "4", "--tasks", *tasks, "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert set(written) == set(tasks)
    for entry in written.values():
        cart = [entry["divergence_rms"][k]["x"] for k in ("1", "10", "50")]
        assert 0 < cart[0] < cart[1] < cart[2]
        for variant in ("sim", "real"):
            assert np.isfinite(entry["zero_policy_return"][variant]["mean"])
    balance = written["cartpole_balance"]["zero_policy_return"]
    # Undamped, a fallen `sim` pole keeps swinging back up; in `real` the damping lets it settle
    # hanging down, so the same zero policy scores far lower there.
    assert balance["real"]["mean"] < balance["sim"]["mean"] - 10
    printed = capsys.readouterr().out
    assert "cartpole_swingup" in printed and "RMS |real - sim|" in printed


def test_bad_trajectory_count_is_rejected(capsys):
    with pytest.raises(SystemExit):
        report.main(["--trajectories", "0"])
    assert "--trajectories must be positive, got 0" in capsys.readouterr().err
