"""The comparison table of a run with `run.compare`: solved shares first, scores against the
best policy known on the real, and a gap closure only where the gap stands out of its noise."""

import math

import pytest

from experiments.compare import compare, format_table, reference_run
from scoring import gap_stands_out, share_std


def summary(algo: str, solved_real: float, return_real: float, *, n: int = 64) -> dict:
    return {
        "algo": algo,
        "env": "cartpole_swingup",
        "seed": 0,
        "eval/trajectories": n,
        "eval/solved_real": solved_real,
        "eval/solved_sim": 1.0,
        "eval/return_real": return_real,
        "eval/return_sim": 120.0,
        "eval/solved_random_real": 0.0,
        "eval/return_random_real": -1.0,
        "eval/return_random_sim": -1700.0,
        "eval/return_real_std": 8.0,
        "eval/reference": None,
        "eval/score_solved_real": None,
        "eval/score_real": None,
        "real/transitions": 0,
    }


def test_the_reference_is_whichever_known_policy_solves_more_of_the_real():
    runs = [
        summary("pods", 0.0, 30.0),
        summary("oracle", 0.0, 55.0),
        summary("energy_lqr", 1.0, 147.0),
    ]
    assert reference_run(runs)["algo"] == "energy_lqr"
    runs[1]["eval/solved_real"] = 1.0  # a tie on the solved share: the higher return wins
    assert reference_run(runs)["algo"] == "energy_lqr"
    runs[1]["eval/return_real"] = 150.0
    assert reference_run(runs)["algo"] == "oracle"
    assert reference_run([summary("pods", 0.0, 30.0), summary("hds", 0.5, 60.0)]) is None


def test_scores_and_gap_closures_on_solved_shares():
    runs = compare(
        [
            summary("hds", 0.5, 90.0),
            summary("pods", 0.0, 30.0),
            summary("oracle", 0.25, 55.0),
            summary("energy_lqr", 1.0, 147.0),
        ]
    )
    hds, pods, oracle, classical = runs
    assert {s["eval/reference"] for s in runs} == {"energy_lqr"}
    assert classical["eval/score_solved_real"] == 1.0 and pods["eval/score_solved_real"] == 0.0
    assert hds["eval/score_solved_real"] == pytest.approx(0.5)
    assert hds["eval/gap_closure_solved"] == pytest.approx(0.5)
    assert oracle["eval/gap_closure_solved"] == pytest.approx(0.25)
    # On returns too, against the same reference.
    assert hds["eval/gap_closure"] == pytest.approx(60.0 / 117.0)
    assert hds["eval/score_real"] == pytest.approx(91.0 / 148.0)


def test_a_gap_within_twice_its_standard_error_gets_no_closure():
    # 2 of 64 starts against none: 0.031, within twice its standard error (0.022).
    runs = compare(
        [summary("hds", 0.0, 40.0), summary("pods", 0.0, 30.0), summary("oracle", 2 / 64, 31.0)]
    )
    hds = runs[0]
    assert hds["eval/gap_solved"] == pytest.approx(2 / 64)
    assert hds["eval/gap_solved_std"] == pytest.approx(share_std(2 / 64, 64))
    assert hds["eval/gap_closure_solved"] is None
    # 1.0 of return against a spread of 8 / sqrt(64) per run: no gap on returns either.
    assert hds["eval/gap_closure"] is None
    table = format_table(runs)
    assert "no gap" in table and "reference: oracle" in table


def test_the_table_leads_with_the_solved_shares():
    runs = compare([summary("pods", 0.0, 30.0), summary("energy_lqr", 1.0, 147.0)])
    header = format_table(runs).splitlines()[2].split()
    assert header[:5] == ["policy", "solved", "real", "solved", "sim"]
    row = format_table(runs).splitlines()[4].split()
    assert row[:3] == ["energy_lqr", "100%", "100%"]


@pytest.mark.parametrize(
    "gap, std, stands_out",
    [
        (0.5, 0.1, True),
        (0.2, 0.1, False),
        (-0.5, 0.1, True),
        (math.nan, 0.1, False),
        (0.3, math.nan, False),
    ],
)
def test_gap_stands_out_beyond_twice_its_std(gap, std, stands_out):
    assert gap_stands_out(gap, std) is stands_out


def test_the_table_names_what_each_policy_trained_on_and_what_all_are_scored_on():
    runs = [summary("pods", 0.0, 30.0), summary("oracle", 1.0, 147.0)]
    runs[0] |= {"train/env": "cartpole_swingup_sim"}
    runs[1] |= {"train/env": "cartpole_swingup_lab"}
    for run in runs:
        run |= {"real/system": "UserCartPole-v0", "sim/system": "cartpole_swingup_sim"}
    lines = format_table(compare(runs)).splitlines()
    assert lines[1].endswith(
        "held-out initial states of UserCartPole-v0 (real) and cartpole_swingup_sim (sim)"
    )
    assert lines[2].endswith("trained on")
    assert lines[3].split()[0] == "pods" and lines[3].endswith("  cartpole_swingup_sim")
    assert lines[4].split()[0] == "oracle" and lines[4].endswith("  cartpole_swingup_lab")
