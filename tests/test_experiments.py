"""The hydra entry point, run directories, sweeps and resume, through the real command line."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

import experiments.train  # noqa: F401  (registers the schemas)
from dynamics_models import ModelConfig
from experiments.deploy import LoadedPolicy, load_policy
from experiments.schema import ConfigError, to_library_config
from experiments.trainers import NEEDS_TESTBED
from pods.config import PODSConfig
from pods.xla_log_filter import drop_known
from sim2real.evaluation import evaluate, evaluate_sim_and_real, seed_streams
from sim2real.testbed_spec import Physics

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "experiments" / "conf"
TINY = [
    "env=cartpole_balance",
    "env.episode_length=8",
    "run.eval_trajectories=4",
    "run.progress_bar=false",
]
# Sizes for the algorithms built on PODS; the Brax agents and LQR have other fields.
PODS_TINY = [
    # Tiny epochs take milliseconds: 300 of them leave the kill-and-resume test seconds of
    # margin to land its SIGKILL in the middle of the run, even on a loaded machine.
    "algo.num_epochs=300",
    "algo.num_trajectories=4",
    "algo.minibatch_size=16",
    "algo.hidden_sizes=[8]",
    "algo.num_step_sizes=3",
    # First order, as the library's PODSConfig defaults: the solving settings' second-order
    # epoch compiles for a minute, which the subprocess runs here would each pay.
    "algo.order=1",
    "algo.elite_fraction=1.0",
    "algo.gradient_window=null",
    "algo.exploration_noise=0.0",
    "algo.exploration_decay=1.0",
    "algo.distill_passes=4",
]
PODS_FAMILY = ("pods", "oracle", "hds", "pods_sysid", "hds_sysid")
TIMING_KEYS = ("train/wall_clock_s",)


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_config(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=False)


def build_library_configs(cfg) -> None:
    """What run_experiment checks before any compute, including the algorithm's own config."""
    from experiments.train import check_config

    check_config(cfg)


@pytest.mark.parametrize("env", group_options("env"))
@pytest.mark.parametrize("algo", group_options("algo"))
def test_every_env_and_algo_composes_and_builds(env, algo):
    cfg = compose_config([f"env={env}", f"algo={algo}"])
    assert cfg.algo.name == algo
    if env == "brax" and algo in NEEDS_TESTBED:
        # Brax's registry envs have no real variant, nor the testbeds' physics.
        with pytest.raises(ConfigError, match=f"algo={algo} .*env=brax"):
            build_library_configs(cfg)
        return
    if env == "brax" and algo == "pods":
        # The solving settings' second order needs a differentiable reward; reacher's is not.
        with pytest.raises(ConfigError, match="algo.order=2 .* or use algo.order=1"):
            build_library_configs(cfg)
        build_library_configs(compose_config([f"env={env}", f"algo={algo}", "algo.order=1"]))
        return
    if algo == "lqr" and env.endswith("swingup"):
        with pytest.raises(ConfigError, match="balance tasks"):
            build_library_configs(cfg)
        return
    if algo == "energy_lqr" and env == "double_cartpole_swingup":
        # The energy swing-up pumps one pole; on the double cart-pole only its catch runs.
        with pytest.raises(ConfigError, match="algo=energy_lqr swings up one pole"):
            build_library_configs(cfg)
        return
    assert cfg.env.system in ("cartpole", "double_cartpole", "brax")
    build_library_configs(cfg)


@pytest.mark.parametrize("model", group_options("model"))
def test_every_model_composes_and_builds(model):
    cfg = compose_config([f"model={model}", "algo=hds"])
    assert to_library_config(ModelConfig, cfg.model, "model").kind == model


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_preset_composes(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    build_library_configs(cfg)
    # Each algorithm the preset compares with composes with the preset's overrides too.
    for name in cfg.run.compare:
        build_library_configs(compose_config([f"experiment={experiment}", f"algo={name}"]))


@pytest.mark.parametrize("algo", ["pods", "oracle", "pods_sysid", "hds", "hds_sysid"])
def test_the_double_cart_pole_starts_every_pods_algorithm_from_its_own_solving_settings(algo):
    for task in ("swingup", "balance"):
        cfg = compose_config([f"env=double_cartpole_{task}", f"algo={algo}"])
        assert cfg.algo.feedback and cfg.algo.horizon_start == 10
        assert cfg.algo.distill_states == "both" and cfg.algo.num_epochs == 100
        # The shared solving settings underneath still hold, and the command line wins.
        assert cfg.algo.order == 2 and cfg.algo.elite_fraction == 0.125
        # The swing-up alone doubles the rollouts (solving/double_cartpole_swingup.yaml).
        assert cfg.algo.num_trajectories == {"swingup": 256, "balance": 128}[task]
        cfg = compose_config([f"env=double_cartpole_{task}", f"algo={algo}", "algo.feedback=false"])
        assert not cfg.algo.feedback and cfg.algo.horizon_start == 10
    single = compose_config(["env=cartpole_swingup", f"algo={algo}"])
    assert not single.algo.feedback and single.algo.horizon_start is None


def test_physics_is_overridable_field_by_field():
    import experiments.train as entry

    cfg = compose_config(["env.real.slider_damping=2.5", "env.sim.actuator_gain=0.9"])
    sim, real = entry.build_envs(cfg, None)
    real = real.twin
    assert real.physics.slider_damping == 2.5 and real.physics.slider_friction == 1.0
    assert sim.physics.actuator_gain == 0.9 and sim.physics.slider_damping == 0.0


def test_the_control_period_is_one_setting_for_sim_and_both_reals():
    import experiments.train as entry

    double = ["env=double_cartpole_balance"]
    sim, real = entry.build_envs(compose_config(double), None)
    assert sim.dt == pytest.approx(0.05) and real.twin.dt == pytest.approx(0.05)
    sim, real = entry.build_envs(compose_config([*double, "env.n_frames=2"]), None)
    assert sim.dt == pytest.approx(0.02) and real.twin.dt == pytest.approx(0.02)
    # The lab's own 5 ms step divides the new period, in its Brax twin and in MuJoCo.
    lab = compose_config([*double, "env.n_frames=2", "env.real_profile=lab", "real.engine=mujoco"])
    _, real = entry.build_envs(lab, None)
    assert real.twin.dt == pytest.approx(0.02) and real.make_env().dt == pytest.approx(0.02)


def test_a_run_keeps_the_library_configs_and_envs_its_checks_built(tmp_path):
    """Converted and built once, by `check_config`, in the run's dtype: float64 testbeds for
    algo.float64=true, though the run turns float64 on only once it is checked."""
    from experiments.train import prepare_run
    from experiments.trainers import algo_config

    cfg = compose_config(["algo=hds", "algo.float64=true"])
    ctx = prepare_run(cfg, tmp_path / "run")
    assert ctx.configs.algo == algo_config(cfg) and ctx.configs.float64
    assert ctx.configs.loop.budget == cfg.real.budget and ctx.configs.model.kind == cfg.model.kind
    assert ctx.sim.dtype == jnp.float64 and ctx.real.twin.dtype == jnp.float64


def test_library_config_errors_name_the_key_and_value():
    with pytest.raises(ConfigError, match=r"algo: PODSConfig.horizon .* got 0$"):
        to_library_config(PODSConfig, {"horizon": 0}, "algo")
    with pytest.raises(ConfigError, match="algo.foo: unknown key"):
        to_library_config(PODSConfig, {"foo": 1}, "algo")


def tiny_overrides(overrides: tuple[str, ...]) -> list[str]:
    """TINY (less its env where the overrides pick one), plus PODS_TINY unless the overrides
    pick an algorithm outside the PODS family."""
    algos = [o.split("=", 1)[1] for o in overrides if o.startswith("algo=")]
    pods_family = all(name in PODS_FAMILY for name in algos)
    tiny = [
        o
        for o in TINY
        if not (o.startswith("env=") and any(x.startswith("env=") for x in overrides))
    ]
    return tiny + (PODS_TINY if pods_family else [])


def train_command(run_dir: Path, *overrides: str, multirun: bool = False) -> list[str]:
    command = [sys.executable, "-m", "experiments.train"]
    directory = f"hydra.sweep.dir={run_dir}" if multirun else f"hydra.run.dir={run_dir}"
    return (
        command + (["-m"] if multirun else []) + [directory, *tiny_overrides(overrides), *overrides]
    )


def run_train(
    run_dir: Path,
    *overrides: str,
    multirun: bool = False,
    check: bool = True,
    environment: dict[str, str] | None = None,
):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(environment or {})}
    result = subprocess.run(
        train_command(run_dir, *overrides, multirun=multirun),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_replays_its_summary(run_dir) -> LoadedPolicy:
    """The policy `load_policy` loads from `run_dir`, played deterministically from the run's
    held-out evaluation starts: the real (and sim) return and solved share of its
    summary.json, exactly."""
    loaded = load_policy(run_dir)
    cfg = loaded.config
    dtype = jnp.float64 if cfg.algo.get("float64") else jnp.float32
    sim, real = experiments.train.build_envs(cfg, dtype)
    n = cfg.run.eval_trajectories
    _, eval_key = seed_streams(cfg.seed)
    if real is None:  # env=brax: sim only
        returns = {"sim": evaluate(sim, loaded.make_policy, loaded.params, eval_key, n)}
    else:
        returns = evaluate_sim_and_real(
            loaded.make_policy, loaded.params, sim, real.evaluation_env(n), eval_key, n
        )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["algo"] == cfg.algo.name
    for variant, result in returns.items():
        assert result.policy == summary[f"eval/return_{variant}"], variant
        expected = summary[f"eval/solved_{variant}"]
        # No criterion (a Brax registry env): NaN, which summary.json may hold as null.
        unsolvable = np.isnan(result.solved) and (expected is None or np.isnan(expected))
        assert result.solved == expected or unsolvable, variant
    observation = np.asarray(sim.reset(jax.random.PRNGKey(0)).obs)
    np.testing.assert_allclose(
        np.asarray(loaded.policy(observation)),
        loaded.make_policy(loaded.params)(observation),
        rtol=1e-4,  # jitted against eager: float32's rounding
    )
    return loaded


def read_tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Scalars of every event file in `folder`, read from the TFRecord framing directly."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float]] = {}
    for path in folder.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A real two-job multirun (seeds 0 and 1) of the tiny config."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    result = run_train(sweep_dir, "seed=0,1", multirun=True)
    assert "random" in result.stdout and "real" in result.stdout
    return sweep_dir


@pytest.fixture(scope="module")
def finished_run(sweep) -> Path:
    (run,) = [p.parent for p in sweep.glob("*/summary.json") if "seed0" in p.parent.name]
    return run


def test_a_two_job_multirun_makes_two_run_directories(sweep):
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == 2
    assert sorted(json.loads(p.read_text())["seed"] for p in summaries) == [0, 1]


def test_a_run_writes_every_file_of_its_directory(finished_run):
    for name in (
        ".hydra/config.yaml",
        "metrics.jsonl",
        "summary.json",
        "checkpoints/latest.msgpack",
        "checkpoints/latest.json",
        "artifacts/rollout_sim_vs_real.gif",
    ):
        assert (finished_run / name).is_file(), name
    summary = json.loads((finished_run / "summary.json").read_text())
    for key in (
        "algo",
        "env",
        "seed",
        "eval/return_sim",
        "eval/return_real",
        "eval/score_real",
        "train/epochs",
        "train/wall_clock_s",
        "train/sim_steps",
        "real/transitions",
    ):
        assert key in summary, key
    assert summary["train/epochs"] == 300 and summary["algo"] == "pods"
    records = [
        json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in records] == list(range(300))
    assert {"train/return", "train/distill_loss", "train/accept_rate"} <= set(records[0])


def test_tensorboard_events_hold_the_metrics_of_metrics_jsonl(finished_run):
    scalars = read_tensorboard_scalars(finished_run / "tensorboard")
    records = [
        json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()
    ]
    for record in records:
        for key, value in record.items():
            if key != "epoch" and value is not None:
                assert scalars[key][record["epoch"]] == pytest.approx(value, rel=1e-6, abs=1e-6)


def link_or_copy(source: str, destination: str) -> None:
    """A hard link where the two folders share a file system, else a copy."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def test_a_run_stores_its_epoch_and_the_next_seed_loads_it_to_the_same_metrics(sweep, tmp_path):
    """The first run of a config stores its compiled epoch (`pods.programs`); a later
    process with another seed loads it instead of tracing, and trains to the metrics of the
    sweep's run of that seed, whose epoch was traced in its own process."""
    shared = Path(os.environ.get("PODS_JAX_CACHE") or REPO / ".jax_cache")
    cache = tmp_path / "cache"  # the shared compilation cache, hard-linked, with no programs
    if shared.is_dir():
        try:
            shutil.copytree(
                shared, cache, copy_function=link_or_copy, ignore=shutil.ignore_patterns("programs")
            )
        except shutil.Error:  # an entry another test process was writing: compiled again
            pass
    environment = {"PODS_JAX_CACHE": str(cache)}
    run_train(tmp_path / "seed0", environment=environment)
    (program,) = (cache / "programs").glob("pods_epoch-*.jaxexport")
    stamp = program.stat().st_mtime_ns
    run_train(tmp_path / "seed1", "seed=1", environment=environment)
    assert list((cache / "programs").iterdir()) == [program]
    assert program.stat().st_mtime_ns == stamp  # read, not written again
    (reference,) = sweep.glob("*seed1/metrics.jsonl")
    got, expected = (
        [json.loads(line) for line in path.read_text().splitlines()]
        for path in (tmp_path / "seed1" / "metrics.jsonl", reference)
    )
    assert without_timing(got) == without_timing(expected)


def test_the_stored_epochs_context_is_the_config_less_its_seed_and_the_envs_physics(tmp_path):
    from experiments.train import prepare_run
    from experiments.trainers import program_store

    def context(*overrides):
        ctx = prepare_run(compose_config(list(overrides)), tmp_path / "run")
        store = program_store(ctx, ctx.sim)
        return None if store is None else store.context

    base = context("env=cartpole_balance")
    assert base is not None and context("env=cartpole_balance", "seed=3") == base
    assert context("env=cartpole_balance", "algo.learning_rate=0.01") != base
    assert context("env=cartpole_balance", "run.store_programs=false") is None
    # System identification sets the physics at run time, past the config: the env says it.
    ctx = prepare_run(compose_config(["env=cartpole_balance"]), tmp_path / "run")
    identified = ctx.sim.with_physics(Physics(slider_damping=2.0))
    assert program_store(ctx, identified).context != base


def test_killed_run_resumes_to_the_same_metrics(finished_run, tmp_path):
    run_dir = tmp_path / "killed"
    process = subprocess.Popen(
        train_command(run_dir),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "summary.json").exists()
    assert 3 <= len(metrics.read_text().splitlines()) < 300

    resumed = run_train(run_dir)
    assert "resuming" in resumed.stderr
    # The uninterrupted reference is the sweep's seed-0 run: the same config.
    expected = (finished_run / "metrics.jsonl").read_text().splitlines()
    got = metrics.read_text().splitlines()
    assert len(got) == 300
    assert without_timing([json.loads(x) for x in got]) == without_timing(
        [json.loads(x) for x in expected]
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    reference_summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["eval/return_real"] == reference_summary["eval/return_real"]


def has_known_xla_lines(stderr: str) -> bool:
    return b"".join(drop_known(stderr.encode())) != stderr.encode()


def test_a_finished_run_continues_to_more_epochs(finished_run, tmp_path):
    """Started again with a larger algo.num_epochs, a finished run trains the epochs it lacks
    and ends as a run asked for that many from the start."""
    import shutil

    extended_dir = tmp_path / "extended"
    shutil.copytree(finished_run, extended_dir)
    extended = run_train(extended_dir, "algo.num_epochs=303")
    assert "resuming" in extended.stderr
    # Without the filter, the same run shows what every cache hit makes XLA log...
    fresh_dir = tmp_path / "fresh"
    unfiltered = {"PODS_XLA_LOGS": "all", "TF_CPP_MIN_LOG_LEVEL": "0"}
    fresh = run_train(fresh_dir, "algo.num_epochs=303", environment=unfiltered)
    assert has_known_xla_lines(fresh.stderr), fresh.stderr[-2000:]
    # ...and with it, the command line prints none of those lines.
    assert not has_known_xla_lines(extended.stderr), extended.stderr[-2000:]
    got = [json.loads(x) for x in (extended_dir / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(x) for x in (fresh_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(got) == 303 and without_timing(got) == without_timing(expected)
    summary = json.loads((extended_dir / "summary.json").read_text())
    assert summary["train/epochs"] == 303
    assert (
        summary["eval/return_real"]
        == json.loads((fresh_dir / "summary.json").read_text())["eval/return_real"]
    )
    config = (extended_dir / ".hydra" / "config.yaml").read_text()
    assert "num_epochs: 303" in config


def test_a_brax_env_runs_sim_only_and_its_returns_stop_at_termination(tmp_path):
    """Brax's inverted_pendulum pays 1 per step until the pole passes 0.2 rad: a return is
    the episode's length, short of the horizon; its reward has no gradient, which is said."""
    run_dir = tmp_path / "pendulum"
    horizon = 60
    result = run_train(
        run_dir,
        "env=brax",
        "env.name=inverted_pendulum",
        f"env.episode_length={horizon}",
        "algo.num_epochs=2",
    )
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert "inverted_pendulum" in warning and "no gradient" in warning
    assert "env.reward=sim2real.brax_envs:inverted_pendulum_upright" in warning
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        assert record["train/return"] == record["train/episode_steps"] < horizon
        assert record["train/grad_norm"] == 0.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env"] == "brax_inverted_pendulum" and summary["eval/return_real"] is None
    assert summary["eval/return_random_real"] is None and summary["eval/score_real"] is None
    # Held-out evaluation stops counting too: a whole horizon would score exactly 60.
    assert 0 < summary["eval/return_sim"] < horizon
    assert 0 < summary["eval/return_random_sim"] < horizon
    assert not (run_dir / "artifacts" / "rollout_sim_vs_real.gif").exists()
    assert "brax_inverted_pendulum" in result.stdout


BRAX_TINY = [
    "algo.num_evals=2",
    "algo.num_eval_envs=4",
]
APG_TINY = ["algo=apg", "algo.policy_updates=2", "algo.num_envs=4", "algo.horizon_length=4"]
PPO_TINY = [
    "algo.num_timesteps=2000",
    "algo.num_envs=8",
    "algo.batch_size=8",
    "algo.num_minibatches=2",
    "algo.unroll_length=4",
    "algo.policy_hidden_sizes=[8]",
    "algo.value_hidden_sizes=[8]",
]


@pytest.mark.slow  # Brax's agents compile for minutes, even this small
@pytest.mark.parametrize(
    "overrides",
    [
        APG_TINY,
        ["algo=ppo_dr", *PPO_TINY],
        # Brax's own envs, sim only, for the Brax agents too.
        [*APG_TINY, "env=brax", "env.name=reacher"],
        ["algo=ppo", *PPO_TINY, "env=brax", "env.name=inverted_pendulum"],
    ],
)
def test_brax_agent_runs_write_their_directory(tmp_path, overrides):
    run_dir = tmp_path / "brax"
    run_train(run_dir, *BRAX_TINY, *overrides)
    for name in ("metrics.jsonl", "summary.json", "checkpoints/latest.msgpack"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["algo"] == overrides[0].split("=")[1] and summary["real/transitions"] == 0
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) >= 2 and all("train/return" in r for r in records)
    # The trained params deploy: what the run evaluated, from its checkpoint.
    assert_replays_its_summary(run_dir)


@pytest.mark.slow  # the evaluation's compile dominates
def test_lqr_run_balances(tmp_path):
    run_dir = tmp_path / "lqr"
    run_train(run_dir, "algo=lqr")
    summary = json.loads((run_dir / "summary.json").read_text())
    # 8 steps from near upright: LQR keeps the pole up, within 2% of the maximum (8).
    assert summary["eval/return_sim"] > 0.98 * 8 and summary["eval/return_real"] > 0.98 * 8
    (record,) = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert record["train/closed_loop_spectral_radius"] < 1


@pytest.mark.slow  # collection, identification and PODS: three compiles
def test_pods_sysid_run_identifies_then_trains(tmp_path):
    run_dir = tmp_path / "sysid"
    run_train(run_dir, "algo=pods_sysid", "real.budget=80", "sysid.num_steps=20")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["real/transitions"] == 80 and summary["train/epochs"] == 300
    identified = json.loads((run_dir / "artifacts" / "sysid.json").read_text())
    assert summary["sysid/slider_damping"] == identified["physics"]["slider_damping"] > 0
    assert_replays_its_summary(run_dir)  # the policy trained in the identified simulator


@pytest.mark.slow  # collection, the lab family's fit and PODS in a lab testbed: three compiles
def test_pods_sysid_lab_family_resumes_without_collecting_or_fitting_again(tmp_path):
    run_dir = tmp_path / "sysid_lab"
    lab_family = [
        "algo=pods_sysid",
        "sysid.family=lab",
        "sysid.max_delay_steps=2",
        "sysid.num_steps=5",
        "real.budget=16",
        "run.animation=false",
    ]
    run_train(run_dir, *lab_family, "algo.num_epochs=2")
    path = run_dir / "artifacts" / "sysid.json"
    identified = json.loads(path.read_text())
    assert identified["family"] == "lab" and identified["real_transitions"] == 16
    assert len(identified["delay_loss"]) == 3 and identified["lab"]["integrator"] == "rk4"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["sysid/family"] == "lab"
    assert summary["sysid/latency_steps"] == identified["lab"]["latency_steps"]
    # Values no fit would find: a continued run that shows them trained on the record.
    identified["lab"]["motor_time_constant"] = 0.0123
    identified["physics"]["actuator_gain"] = 0.777
    path.write_text(json.dumps(identified))
    resumed = run_train(run_dir, *lab_family, "algo.num_epochs=3")
    assert "resuming" in resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train/epochs"] == 3 and summary["real/transitions"] == 16
    assert summary["sysid/motor_time_constant"] == 0.0123
    assert summary["sysid/actuator_gain"] == 0.777


def test_compared_runs_take_only_the_overrides_their_algorithm_has(capsys):
    from experiments.train import compose_compared

    overrides = ["algo=hds", "algo.beta=0.25", "algo.num_epochs=3", "seed=4"]
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        pods = compose_compared("pods", overrides)
        oracle = compose_compared("oracle", overrides)
    for cfg, name in ((pods, "pods"), (oracle, "oracle")):
        assert cfg.algo.name == name and "beta" not in cfg.algo
        assert cfg.algo.num_epochs == 3 and cfg.seed == 4 and cfg.run.compare == []
        build_library_configs(cfg)
    assert "run.compare=pods: pods has no algo.beta; left out of its run" in capsys.readouterr().err


@pytest.mark.slow
def test_submitit_local_multirun_writes_each_run_and_resumes_a_killed_one(finished_run, tmp_path):
    """The SLURM path without a cluster: submitit's local executor runs a 2-job multirun into
    two run directories; the same multirun killed mid-run and submitted again resumes each
    job from its checkpoint to the metrics of a run never interrupted."""
    sweep_dir = tmp_path / "submitit"
    command = train_command(
        sweep_dir,
        "seed=0,1",
        "launcher=submitit_local",
        "hydra.sweep.subdir=seed${seed}",
        multirun=True,
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the jobs are its children: kill them all
    )
    metrics = sweep_dir / "seed0" / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (sweep_dir / "seed0" / "summary.json").exists()

    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = sorted(sweep_dir.glob("seed*/summary.json"))
    assert [json.loads(p.read_text())["seed"] for p in summaries] == [0, 1]
    logs = "".join(p.read_text() for p in sweep_dir.glob(".submitit/*/*_log.err"))
    assert "resuming" in logs
    expected = (finished_run / "metrics.jsonl").read_text().splitlines()
    assert without_timing([json.loads(x) for x in metrics.read_text().splitlines()]) == (
        without_timing([json.loads(x) for x in expected])
    )


def test_a_seed_batch_writes_each_seeds_own_run_and_resumes_a_seed_behind(sweep, tmp_path):
    """`launcher=seed_batch` trains seeds 0 and 1 as one program into two ordinary run
    directories, equal to float32 rounding to the basic launcher's runs of the same seeds.
    Seed 0 has a checkpoint halfway (a batch killed between the seeds' checkpoints leaves
    them apart): it resumes there while seed 1 starts from nothing.

    Tolerance: the batched program sums some products in another order, and 300 epochs
    amplify the last-digit differences (as between CPU types): measured, the returns agree
    to 2e-4 over all 300 epochs and the distillation loss and gradient norm to 3e-4 over the
    first 100; over the last 50, seed 1's differ by up to 70x and 1x (relative). The float64
    library test holds them to 1e-9."""
    batch_dir = tmp_path / "batch"
    run_train(batch_dir / "seed0", "algo.num_epochs=150")
    result = run_train(
        batch_dir,
        "seed=0,1",
        "launcher=seed_batch",
        "hydra.sweep.subdir=seed${seed}",
        multirun=True,
    )
    assert "2 seeds in one program" in result.stdout + result.stderr
    assert "resuming" in result.stderr
    for seed in (0, 1):
        (reference,) = sweep.glob(f"*_seed{seed}")
        got = [json.loads(x) for x in (batch_dir / f"seed{seed}" / "metrics.jsonl").open()]
        expected = [json.loads(x) for x in (reference / "metrics.jsonl").open()]
        assert [r["epoch"] for r in got] == list(range(300))
        for name, epochs in (
            ("train/return", 300),
            ("train/distill_loss", 100),
            ("train/grad_norm", 100),
        ):
            np.testing.assert_allclose(
                [r[name] for r in got[:epochs]], [r[name] for r in expected[:epochs]], rtol=1e-3
            )
        summary = json.loads((batch_dir / f"seed{seed}" / "summary.json").read_text())
        reference_summary = json.loads((reference / "summary.json").read_text())
        assert summary["seed"] == seed
        # The same config as the seed's own run: either can resume the other's directory.
        assert summary["config_fingerprint"] == reference_summary["config_fingerprint"]
        np.testing.assert_allclose(
            summary["eval/return_real"], reference_summary["eval/return_real"], rtol=1e-3
        )
        assert f"seed: {seed}" in (batch_dir / f"seed{seed}" / ".hydra" / "config.yaml").read_text()
