"""paper_figures.table: per-seed scores against that seed's oracle and PODS, then averaged."""

import json

import pytest

from paper_figures.runs import find_runs
from paper_figures.table import main, rows


def write_run(root, name, **summary):
    path = root / name
    path.mkdir(parents=True)
    base = {
        "env": "cartpole_swingup",
        "eval/return_sim": 40.0,
        "eval/return_random_real": 0.0,
        "real/transitions": 0,
        "train/wall_clock_s": 10.0,
    }
    (path / "summary.json").write_text(json.dumps({**base, **summary}))


def test_scores_are_per_seed_then_averaged(tmp_path, capsys):
    for seed, (pods, oracle, hds) in enumerate([(10.0, 50.0, 30.0), (20.0, 40.0, 40.0)]):
        write_run(tmp_path, f"pods{seed}", algo="pods", seed=seed, **{"eval/return_real": pods})
        write_run(
            tmp_path, f"oracle{seed}", algo="oracle", seed=seed, **{"eval/return_real": oracle}
        )
        write_run(
            tmp_path,
            f"hds{seed}",
            algo="hds",
            seed=seed,
            **{"eval/return_real": hds, "hds/beta": 0.5, "model/kind": "mlp"},
        )
    table = {row["method"]: row for row in rows(find_runs(tmp_path))}
    hds = table["hds, beta 0.5, mlp"]
    # Seed 0: score 30/50, gap (30-10)/(50-10); seed 1: score 40/40, gap (40-20)/(40-20).
    assert hds["score_real"]["mean"] == pytest.approx((0.6 + 1.0) / 2)
    assert hds["gap_closure"]["mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert hds["return_real"]["mean"] == pytest.approx(35.0) and hds["seeds"] == [0, 1]
    assert table["oracle"]["score_real"]["mean"] == 1.0
    assert table["pods"]["gap_closure"]["mean"] == 0.0
    assert main([str(tmp_path)]) == 0
    assert "hds, beta 0.5, mlp" in capsys.readouterr().out


def test_a_folder_without_runs_is_an_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no finished run" in capsys.readouterr().err
