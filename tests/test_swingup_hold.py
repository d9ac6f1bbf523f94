"""benchmarks/swingup_hold.py: what it counts of a policy's lean, and its one-line refusals."""

import importlib.util
import pathlib

import numpy as np
import pytest


def _load(name: str):
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hold = _load("swingup_hold")


def test_reached_held_and_fallen_are_counted_per_start():
    lean = np.full((4, 12), 3.0)
    lean[0, 3:] = 0.1  # up at 3, held: solved over the last 4 of an 8-step episode
    lean[1, 2:5] = 0.25  # reaches 0.3 at step 2, falls: not solved
    lean[2, 2:] = 0.1
    lean[2, 3] = 0.25  # up at 2, out of the tolerance at 3: held from 4, solved
    # start 3 never comes up
    report = hold.hold_report(lean, tolerance=0.2, episode=8, window=4)
    assert report["reached"] == [3, 2, 2, 12]
    assert report["held_from"] == [3, 12, 4, 12]
    assert report["solved"] == pytest.approx(0.5)
    assert report["reached_by_episode_end"] == pytest.approx(0.75)
    # Start 1 reached and then leaned past 1 rad in the window: it fell.
    assert report["fell_after_reaching"] == pytest.approx(0.25)
    np.testing.assert_allclose(report["window_max_lean"], [0.1, 3.0, 0.1, 3.0])


def test_a_folder_that_is_no_run_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["swingup_hold.py", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        hold.main()
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(tmp_path) in last and "not a run directory" in last
