"""The study over seeds (benchmarks/study.py) and the ranges `make run` prints from it
(experiments.study_ranges): synthetic run directories, no training."""

import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest

from experiments.study_ranges import STUDY, format_ranges
from paper_figures import style

REPO = pathlib.Path(__file__).parents[1]


def _load_study():
    spec = importlib.util.spec_from_file_location(
        "benchmark_study", REPO / "benchmarks" / "study.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


study = _load_study()
PART = study.PARTS["lab_b5000"]


def _summary(algo: str, seed: int, solved: float, **extra) -> dict:
    return {
        "algo": algo,
        "real/profile": "lab",
        "seed": seed,
        "eval/solved_real": solved,
        "eval/solved_sim": 1.0,
        "eval/return_real": 100.0 * solved,
        "eval/return_sim": 150.0,
        "eval/trajectories": 64,
        "real/transitions": 0,
        **extra,
    }


def _finished(root: pathlib.Path, seed: int, hds: float, rivals: dict[str, float]) -> None:
    """`make run`'s directory for one seed: HDS's summary, then each compared run's."""
    run = root / PART.name / f"seed{seed}"
    (run / ".hydra").mkdir(parents=True)
    overrides = study.command(PART, seed)[3:]
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    compare = list(rivals)
    (run / ".hydra" / "config.yaml").write_text(json.dumps({"run": {"compare": compare}}))
    hds_extra = {"hds/beta": 0.5, "real/budget": 5000, "real/transitions": 5000}
    (run / "summary.json").write_text(json.dumps(_summary("hds", seed, hds, **hds_extra)))
    for algo, solved in rivals.items():
        (run / algo).mkdir()
        (run / algo / "summary.json").write_text(json.dumps(_summary(algo, seed, solved)))


@pytest.fixture
def offline(monkeypatch):
    """Fingerprints without composing configs, and a launch that must not happen."""
    monkeypatch.setattr(study, "setting_fingerprint", lambda part: "f" + part.name)
    monkeypatch.setattr(study, "stored_fingerprint", lambda run: "f" + run.parent.name)
    monkeypatch.setattr(study, "launch", lambda command, log: pytest.fail(f"ran {command}"))


# HDS solves 0.5, 0.25, 0.75 on seeds 0-2; PODS in sim 0.0, 0.25, 0.5; the classical
# controller 1.0 on every seed.
SEEDS = {0: (0.5, 0.0), 1: (0.25, 0.25), 2: (0.75, 0.5)}


def test_the_study_pairs_methods_seed_by_seed_and_checks_the_target(tmp_path, offline, capsys):
    for seed, (hds, pods) in SEEDS.items():
        _finished(tmp_path, seed, hds, {"pods": pods, "energy_lqr": 1.0})
    argv = ["--parts", PART.name, "--seeds", "0", "1", "2", "--root", str(tmp_path)]
    out = tmp_path / "study.json"
    assert study.main([*argv, "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(out.read_text())
    part = report["parts"][PART.name]
    assert (part["done"], part["missing"], part["fingerprint"]) == ([0, 1, 2], [], "flab_b5000")
    assert part["command"] == "python -m experiments.train experiment=main seed=S"
    assert part["ranges"]["hds"]["solved_real"]["median"] == 0.5

    lab = report["profiles"]["lab"]
    assert set(lab["methods"]) == {"hds beta=0.5 @5000", "pods", "energy_lqr"}
    assert lab["methods"]["hds beta=0.5 @5000"]["solved_real"]["mean"] == pytest.approx(0.5)
    versus_pods = lab["hds_paired"]["hds beta=0.5 @5000"]["pods"]["solved_real"]
    # Differences 0.5, 0.0, 0.25: two wins, one tie; the sign test over the two is p = 0.5.
    assert (versus_pods["wins"], versus_pods["losses"], versus_pods["ties"]) == (2, 0, 1)
    assert versus_pods["difference"]["mean"] == pytest.approx(0.25)
    assert versus_pods["sign_test_p"] == pytest.approx(0.5)
    versus_classical = lab["hds_paired"]["hds beta=0.5 @5000"]["energy_lqr"]["solved_real"]
    assert (versus_classical["wins"], versus_classical["losses"]) == (0, 3)
    # HDS ran at 5,000 transitions only: nothing reaches the 1,000-transition target.
    target = lab["targets"]["target (brax twin)"]
    assert target["reached"] == {} and not target["met"]
    assert "energy_lqr's 1.000" in target["target"]


def test_the_target_is_met_by_hds_within_the_budget(tmp_path, offline, monkeypatch):
    monkeypatch.setitem(study.TARGET_BUDGETS, "target", 5000)
    for seed in (0, 1):
        _finished(tmp_path, seed, 0.95, {"oracle": 1.0})
    args = study.parse(["--parts", PART.name, "--seeds", "0", "1", "--root", str(tmp_path)])
    rows = {PART.name: [study.run_seed(PART, s, args, "flab_b5000") for s in (0, 1)]}
    reported = study.report(rows, {PART.name: "flab_b5000"}, args, {PART.name: PART})
    targets = reported["profiles"]["lab"]["targets"]
    assert targets["target (brax twin)"]["met"]  # 0.95 >= 0.9 x 1.0
    assert not targets["stretch (brax twin)"]["met"]  # nothing at <= 400


def test_the_targets_name_the_other_learners_that_reach_the_bar_from_as_much_data(
    tmp_path, offline, monkeypatch
):
    """PODS+sysid from the same budget is reported beside HDS: one that clears 0.9 of the
    reference is named, one that does not is listed only; the classical controller, which
    uses no real data, is neither."""
    monkeypatch.setitem(study.TARGET_BUDGETS, "target", 5000)
    sysid = {"real/budget": 5000, "real/transitions": 5000, "sysid/family": "physics"}
    for seed in (0, 1):
        _finished(tmp_path, seed, 0.5, {"pods_sysid": 0.0, "energy_lqr": 1.0})
        path = tmp_path / PART.name / f"seed{seed}" / "pods_sysid" / "summary.json"
        path.write_text(json.dumps(_summary("pods_sysid", seed, 0.95, **sysid)))
    args = study.parse(["--parts", PART.name, "--seeds", "0", "1", "--root", str(tmp_path)])
    rows = {PART.name: [study.run_seed(PART, s, args, "flab_b5000") for s in (0, 1)]}
    reported = study.report(rows, {PART.name: "flab_b5000"}, args, {PART.name: PART})
    target = reported["profiles"]["lab"]["targets"]["target (brax twin)"]
    assert not target["met"]  # HDS: 0.5 < 0.9
    (sysid_key,) = target["others"]
    assert sysid_key.startswith("pods_sysid") and target["others_met"] == [sysid_key]
    assert target["others"][sysid_key]["mean"] == pytest.approx(0.95)
    stretch = reported["profiles"]["lab"]["targets"]["stretch (brax twin)"]
    assert stretch["others"] == {} and stretch["others_met"] == []


def test_a_seed_whose_compared_runs_have_not_finished_runs_again(tmp_path, offline, monkeypatch):
    _finished(tmp_path, 0, 0.5, {"pods": 0.0, "energy_lqr": 1.0})
    (tmp_path / PART.name / "seed0" / "energy_lqr" / "summary.json").unlink()
    launched = []

    def launch(command, log):
        launched.append(command)
        summary = tmp_path / PART.name / "seed0" / "energy_lqr" / "summary.json"
        summary.write_text(json.dumps(_summary("energy_lqr", 0, 1.0)))
        return 0

    monkeypatch.setattr(study, "launch", launch)
    args = study.parse(["--parts", PART.name, "--seeds", "0", "--root", str(tmp_path)])
    row = study.run_seed(PART, 0, args, "flab_b5000")
    assert len(launched) == 1 and launched[0][-2:] == [
        "seed=0",
        f"hydra.run.dir={tmp_path / PART.name / 'seed0'}",
    ]
    assert [p["algo"] for p in row["policies"]] == ["hds", "energy_lqr", "pods"]
    assert (tmp_path / PART.name / "seed0.process.json").exists()

    # --report-only runs nothing: an unfinished seed is missing.
    (tmp_path / PART.name / "seed0" / "pods" / "summary.json").unlink()
    args = study.parse(
        [*["--parts", PART.name, "--seeds", "0"], "--root", str(tmp_path), "--report-only"]
    )
    assert study.run_seed(PART, 0, args, "flab_b5000") == {"seed": 0, "missing": True}


def test_the_study_refuses_a_directory_of_another_run_or_config(tmp_path, offline, monkeypatch):
    _finished(tmp_path, 0, 0.5, {"pods": 0.0})
    overrides = tmp_path / PART.name / "seed0" / ".hydra" / "overrides.yaml"
    args = study.parse(["--parts", PART.name, "--seeds", "0", "--root", str(tmp_path)])
    monkeypatch.setattr(study, "stored_fingerprint", lambda run: "another")
    with pytest.raises(SystemExit) as exit_info:
        study.run_seed(PART, 0, args, "flab_b5000")
    assert "another config" in str(exit_info.value) and "\n" not in str(exit_info.value)
    overrides.write_text("- experiment=main\n- seed=0\n- algo.beta=0.25\n")
    with pytest.raises(SystemExit) as exit_info:
        study.run_seed(PART, 0, args, "flab_b5000")
    assert "algo.beta=0.25" in str(exit_info.value) and "\n" not in str(exit_info.value)


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--parts", "lab_b999"], "lab_b999"),
        (["--seeds", "0", "-1"], "-1"),
        (["--seeds", "2", "2"], "[2, 2]"),
        (["--jobs", "0"], "--jobs"),
        (["--set", "seed=3"], "seed=3"),
        (["--mujoco", "hds", "ddpg"], "ddpg"),
    ],
)
def test_the_study_refuses_bad_input_in_one_line(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        study.parse(argv)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err.strip().splitlines()[-1]


def test_every_budget_holds_the_episodes_its_loop_settings_spend():
    from sim2real.loop_config import LoopConfig

    for transitions, (initial, collect) in study.LOOP.items():
        loop = LoopConfig(
            budget=transitions, initial_trajectories=initial, collect_trajectories=collect
        )
        spent = (initial + loop.rounds(200) * collect) * 200
        assert spent == transitions, (transitions, spent)


def _ranges_file(tmp_path, fingerprint="abc", done=(0, 1, 2)) -> pathlib.Path:
    spread = {"min": 0.03125, "median": 0.125, "max": 0.5}
    path = tmp_path / "study.json"
    path.write_text(
        json.dumps(
            {
                "cpu": "a CPU",
                "parts": {
                    "lab_b5000": {
                        "fingerprint": fingerprint,
                        "done": list(done),
                        "ranges": {
                            "hds": {"solved_real": spread, "return_real": {**spread, "max": 150.0}}
                        },
                    }
                },
            }
        )
    )
    return path


def test_make_run_prints_the_studys_ranges_for_its_own_setting_only(tmp_path):
    path = _ranges_file(tmp_path)
    lines = format_ranges(["hds", "pods"], "abc", path).splitlines()
    assert "over seeds 0-2" in lines[1] and "part lab_b5000" in lines[1] and "a CPU" in lines[1]
    (hds,) = [line for line in lines if line.split()[:1] == ["hds"]]
    assert hds.split()[1:4] == ["3-50%", "(12%)", "-"]
    assert "0.0-150.0" in hds
    assert not any(line.split()[:1] == ["pods"] for line in lines)  # the study has no PODS row
    assert format_ranges(["hds"], "another setting", path) is None
    assert format_ranges(["hds"], "abc", _ranges_file(tmp_path, done=())) is None
    path.write_text("{not json")
    assert format_ranges(["hds"], "abc", path) is None
    assert format_ranges(["hds"], "abc", tmp_path / "missing.json") is None


def test_the_kept_study_was_measured_at_make_runs_setting_today():
    """A default that changes make run's config makes the kept ranges another setting's:
    this fails until the study's lab_b5000 part is rerun (benchmarks/study.py)."""
    from hydra import compose, initialize_config_module

    from experiments.train import setting_fingerprint

    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=main", "seed=0"])
    kept = json.loads(STUDY.read_text())["parts"]["lab_b5000"]
    assert kept["fingerprint"] == setting_fingerprint(cfg)
    assert kept["done"], "the kept study has no finished seed of make run's setting"


def test_the_study_figure_draws_every_method_and_the_budget_curve(tmp_path, offline, capsys):
    import csv

    from paper_figures import study_figure

    for seed, (hds, pods) in SEEDS.items():
        _finished(tmp_path, seed, hds, {"pods": pods, "energy_lqr": 1.0})
    assert (
        study.main(["--parts", PART.name, "--seeds", "0", "1", "2", "--root", str(tmp_path)]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    paths = study_figure.study(report, tmp_path / "figures")
    assert {p.suffix for p in paths} == {".pdf", ".png", ".csv"}
    with (tmp_path / "figures" / "study.csv").open() as table:
        rows = {(r["method"], r["budget"]): r for r in csv.DictReader(table)}
    assert set(rows) == {("hds beta=0.5", "5000"), ("pods", ""), ("energy_lqr", "")}
    hds = rows["hds beta=0.5", "5000"]
    assert (float(hds["mean"]), int(hds["n"])) == (pytest.approx(0.5), 3)
    # The t-interval over 0.25, 0.5, 0.75, clipped to [0, 1].
    assert float(hds["low"]) == 0.0 and float(hds["high"]) == pytest.approx(1.0)


def test_a_variant_is_drawn_in_its_familys_color_as_a_star_on_the_budget_curve(tmp_path):
    from paper_figures import study_figure

    assert study_figure.family_of("hds beta=0.5, history 2, 256 rollouts") == (
        "hds beta=0.5",
        ", history 2, 256 rollouts",
    )
    assert study_figure.family_of("hds beta=0.5") == ("hds beta=0.5", "")
    assert study_figure.family_of("energy_lqr") == ("energy_lqr", "")

    def cell(shares):
        return {
            "solved_real": {
                "mean": float(np.mean(shares)),
                "ci95": None,
                "n": len(shares),
                "per_seed": {str(s): v for s, v in enumerate(shares)},
            }
        }

    methods = {
        "pods_sysid (lab) @1000": cell([0.0, 0.5]),
        "pods_sysid (lab), history 2, 256 rollouts @1000": cell([1.0, 0.98]),
    }
    drawn = []

    class Curve:
        def errorbar(self, x, y, **kw):
            drawn.append((x, y, kw["fmt"], kw["color"], kw["label"]))

    assert study_figure._variant_points(Curve(), methods) == {1000}
    ((x, y, fmt, color, label),) = drawn
    assert (x, fmt, label) == ([1000], "*", "PODS + sysid (lab family), history 2, 256 rollouts")
    assert y == [pytest.approx(0.99)] and color == style.color("pods_sysid (lab)")


def test_mujoco_plays_only_the_named_algorithms_once_and_reads_them_back(
    tmp_path, offline, monkeypatch
):
    _finished(tmp_path, 0, 0.5, {"pods": 0.0})
    played = []

    def launch(command, log):
        # Stands in for experiments.deploy: writes the figures beside the episodes.
        run = pathlib.Path(command[3])
        played.append((run.name, command[-2:]))
        (run / "artifacts").mkdir(exist_ok=True)
        figures = {"solved": 0.25, "return_mean": 80.0}
        (run / "artifacts" / "deploy_lab_mujoco.json").write_text(json.dumps(figures))
        return 0

    monkeypatch.setattr(study, "launch", launch)
    argv = ["--parts", PART.name, "--seeds", "0", "--root", str(tmp_path), "--mujoco", "hds"]
    row = study.run_seed(PART, 0, study.parse(argv), "flab_b5000")
    assert played == [("seed0", ["--episodes", "64"])]  # the run's held-out starts
    hds, pods = row["policies"]
    assert (hds["solved_mujoco"], hds["return_mujoco"], pods["solved_mujoco"]) == (0.25, 80.0, None)
    # Played once: a second report reads the JSON, and --report-only never plays.
    monkeypatch.setattr(study, "launch", lambda command, log: pytest.fail(f"ran {command}"))
    row = study.run_seed(PART, 0, study.parse(argv), "flab_b5000")
    assert row["policies"][0]["solved_mujoco"] == 0.25


def test_a_part_that_changes_more_than_the_names_carry_keeps_its_own_cells():
    """HDS at 1,000 transitions with the oracle's settings is another cell than plain HDS at
    1,000: its part's variant is in the method's name."""
    summary = _summary("hds", 0, 0.4, **{"hds/beta": 0.5, "real/budget": 1000})
    hist2 = study.policy_row(summary, None, study.PARTS["lab_b1000_hist2"].variant)
    plain = study.policy_row(summary, None)
    assert study.cell_key(plain) == "hds beta=0.5 @1000"
    assert study.cell_key(hist2) == "hds beta=0.5, history 2, 256 rollouts @1000"
    table = study.cells(
        {"a": [{"seed": 0, "policies": [plain]}], "b": [{"seed": 0, "policies": [hist2]}]}
    )
    assert len(table["lab"]) == 2
