"""paper_figures.table: per-seed scores against that seed's oracle and PODS, then averaged."""

import json

import pytest

from paper_figures.runs import find_runs
from paper_figures.table import main, markdown, rows


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


def test_solved_shares_lead_and_the_reference_is_the_best_known_policy(tmp_path, capsys):
    """The classical controller solves more of the real than the oracle: it is the seed's
    reference, on solved shares and on returns."""
    solved = {"pods": (0.0, 30.0), "oracle": (0.25, 110.0), "energy_lqr": (1.0, 147.0)}
    for algo, (share, real) in {**solved, "hds": (0.5, 90.0)}.items():
        extra = {"hds/beta": 0.5, "model/kind": "mlp"} if algo == "hds" else {}
        write_run(
            tmp_path,
            algo,
            algo=algo,
            seed=0,
            **{"eval/solved_real": share, "eval/solved_random_real": 0.0},
            **{"eval/return_real": real},
            **extra,
        )
    table = {row["method"]: row for row in rows(find_runs(tmp_path))}
    hds = table["hds, beta 0.5, mlp"]
    assert hds["score_solved_real"]["mean"] == pytest.approx(0.5)
    assert hds["gap_closure_solved"]["mean"] == pytest.approx(0.5)
    assert hds["gap_closure"]["mean"] == pytest.approx(60.0 / 117.0)
    assert table["energy_lqr"]["score_solved_real"]["mean"] == 1.0
    assert table["oracle"]["gap_closure_solved"]["mean"] == pytest.approx(0.25)
    assert main([str(tmp_path)]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.index("solved real") < header.index("return real")


def test_a_folder_without_runs_is_an_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no finished run" in capsys.readouterr().err


def write_curve(root, name, points):
    (root / name / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"epoch": i, "train/return": r, "train/wall_clock_s": t}) + "\n"
            for i, (t, r) in enumerate(points)
        )
    )


def test_time_to_90_percent_of_the_best_curve_in_sim(tmp_path):
    random = {"eval/return_random_sim": 10.0, "eval/return_real": 0.0}
    # The best logged return in sim is 110: the target is 10 + 0.9 * (110 - 10) = 100.
    curves = {
        "ppo0": ("ppo", 0, [(5.0, 20.0), (9.0, 110.0)]),
        "ppo1": ("ppo", 1, [(4.0, 50.0), (7.0, 100.0)]),
        "pods0": ("pods", 0, [(3.0, 60.0), (6.0, 99.0)]),  # never reaches 100
        "oracle0": ("oracle", 0, [(1.0, 500.0)]),  # in real: neither target nor time
    }
    for name, (algo, seed, points) in curves.items():
        write_run(tmp_path, name, algo=algo, seed=seed, **random)
        write_curve(tmp_path, name, points)
    write_run(tmp_path, "lqr0", algo="lqr", seed=0, **random)  # no curve at all
    table = {row["method"]: row for row in rows(find_runs(tmp_path))}
    assert table["ppo"]["time_to_target_s"]["mean"] == pytest.approx((9.0 + 7.0) / 2)
    assert table["ppo"]["reached_target"] == "2/2"
    assert table["pods"]["time_to_target_s"]["n"] == 0 and table["pods"]["reached_target"] == "0/1"
    assert table["oracle"]["reached_target"] == "-" and table["lqr"]["reached_target"] == "-"


def test_each_real_profile_is_its_own_task_with_student_t_intervals(tmp_path, capsys):
    # Three seeds on each real; the oracle of the lab must not score the friction runs.
    for seed, real in enumerate([1.0, 2.0, 3.0]):
        for profile, oracle in (("lab", 10.0), ("friction", 5.0)):
            common = {"seed": seed, "real/profile": profile, "eval/solved_real": 0.5}
            write_run(
                tmp_path,
                f"o_{profile}{seed}",
                algo="oracle",
                **common,
                **{"eval/return_real": oracle},
            )
            write_run(
                tmp_path,
                f"h_{profile}{seed}",
                algo="hds",
                **common,
                **{
                    "eval/return_real": real,
                    "hds/beta": 0.5,
                    "model/kind": "ensemble",
                    "model/prediction": "member",
                },
            )
    table = {(row["env"], row["method"]): row for row in rows(find_runs(tmp_path))}
    method = "hds, beta 0.5, ensemble (a member per rollout)"
    lab = table["cartpole_swingup, lab real", method]
    friction = table["cartpole_swingup, friction real", method]
    assert lab["score_real"]["mean"] == pytest.approx(0.2)
    assert friction["score_real"]["mean"] == pytest.approx(0.4)
    # Mean 2, standard deviation 1 over 3 seeds: t(0.975, 2) = 4.3027 times 1 / sqrt(3).
    assert lab["return_real"]["ci95"] == pytest.approx(4.302653 / 3**0.5, rel=1e-6)
    assert lab["solved_real"]["mean"] == 0.5
    assert main([str(tmp_path)]) == 0
    assert "| 2.0 ± 2.5 |" in capsys.readouterr().out


def test_a_task_on_a_gymnasium_real_is_named_by_its_id_not_a_profile(tmp_path):
    gym = {"real/engine": "gym", "real/profile": None, "real/system": "UserCartPole-v0"}
    gym |= {"train/env": "cartpole_swingup_sim"}
    write_run(tmp_path, "gym", algo="pods", seed=0, **{"eval/return_real": 1.0, **gym})
    write_run(tmp_path, "twin", algo="pods", seed=0, **{"eval/return_real": 2.0})
    (row_gym,) = [r for r in rows(find_runs(tmp_path / "gym"))]
    (row_twin,) = [r for r in rows(find_runs(tmp_path / "twin"))]
    assert row_gym["env"] == "cartpole_swingup, UserCartPole-v0 real (gym)"
    assert row_twin["env"] == "cartpole_swingup"
    # What it trained on beside what it is scored on; a run from before the key: "-".
    assert row_gym["trained_on"] == "cartpole_swingup_sim" and row_twin["trained_on"] == "-"
    assert "| cartpole_swingup_sim |" in markdown([row_gym])
