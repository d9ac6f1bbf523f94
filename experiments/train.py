"""Train one policy on a testbed and evaluate it in sim and in real.

    python -m experiments.train                                   # PODS on cartpole swing-up
    python -m experiments.train env=cartpole_balance algo.order=2 seed=3
    python -m experiments.train -m seed=0,1,2                     # a sweep
    python -m experiments.train hydra.run.dir=outputs/runs/<run>  # resume a killed run

Every run writes a self-describing directory (see experiments.run_dir). Started again on a
directory that holds a checkpoint of the same config, a run continues from it and ends with
the same metrics as a run that was never interrupted; with a larger `algo.num_epochs`, a
finished run trains on (experiments.resume).

A config that cannot run stops before any compute with one `error: ...` line (exit status 2)
and writes nothing: the run writes its `.hydra/` itself, once every check has passed.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, NoReturn

import hydra
import jax
import jax.numpy as jnp
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from experiments.checks import check_algo, typed_configs
from experiments.compare import compare, format_table
from experiments.real import RealSpec, build_real
from experiments.resume import read_resume, resolved_config
from experiments.run_context import RunConfigs, RunContext, Trained
from experiments.run_dir import RunDirectory, atomic_write_bytes
from experiments.schema import (
    ConfigError,
    build_friction_gradient,
    build_physics,
    register_schemas,
)
from experiments.study_ranges import format_ranges
from experiments.trainers import ALGORITHMS
from pods.runtime import configure_jax, filter_known_xla_logs
from pods.validation import is_integer
from sim2real.evaluation import (
    evaluate,
    evaluate_sim_and_real,
    seed_streams,
)
from sim2real.testbeds import CartPole, make_testbed

if TYPE_CHECKING:
    from brax.envs.base import Env

register_schemas()


def config_fingerprint(cfg: DictConfig) -> str:
    """A hash of everything that determines a run's results (not where it writes)."""
    return _digest(resolved_config(cfg))


def setting_fingerprint(cfg: DictConfig) -> str:
    """`config_fingerprint` without the seed: one value for every seed of one setting, by
    which `experiments.study_ranges` finds the seed ranges a study measured for it."""
    resolved = resolved_config(cfg)
    resolved.pop("seed", None)
    return _digest(resolved)


def _digest(resolved: dict) -> str:
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]


def build_brax_env(cfg: DictConfig) -> Env:
    """`env=brax`: the Brax registry env the config names (sim only)."""
    from sim2real.brax_envs import make_brax_env

    env = cfg.env
    try:
        return make_brax_env(
            env.name, episode_length=env.episode_length, backend=env.backend, reward=env.reward
        )
    except ValueError as err:
        raise ConfigError(f"env: {err}") from None


def build_envs(cfg: DictConfig, dtype) -> tuple[Env, RealSpec | None]:
    """The sim testbed and the real system the config describes; on `env=brax`, the Brax env
    and None (there is no real variant)."""
    sim, common = _build_sim(cfg, dtype)
    if common is None:
        return sim, None
    return sim, build_real(cfg, common, sim)


def build_sim(cfg: DictConfig, dtype) -> Env:
    """The env a policy of `cfg` trains on and observes in its layout: the sim testbed, or
    on `env=brax` the Brax env (the real system is not built: `build_envs`)."""
    return _build_sim(cfg, dtype)[0]


def _build_sim(cfg: DictConfig, dtype) -> tuple[Env, dict | None]:
    env = cfg.env
    if env.system == "brax":
        return build_brax_env(cfg), None
    # A run directory written before the key existed observed the sensors alone.
    history = OmegaConf.select(env, "action_history", default=0)
    if not is_integer(history, 0):
        raise ConfigError(f"env.action_history must be an integer >= 0, got {history!r}")
    common = dict(
        episode_length=env.episode_length,
        backend=env.backend,
        dtype=dtype,
        n_frames=env.n_frames,
        action_history=history,
        # A stored config from before the key differentiated the law itself.
        friction_gradient=build_friction_gradient(
            OmegaConf.select(env, "friction_gradient", default=None)
        ),
    )
    try:
        sim = make_testbed(
            f"{env.system}_{env.task}_sim", physics=build_physics(env.sim, "env.sim"), **common
        )
    except ValueError as err:
        raise ConfigError(f"env: {err}") from None
    return sim, common


class CheckedConfig(NamedTuple):
    """A config that passed `check_config`: its library configs and the envs it describes,
    each built once, for the run to keep."""

    configs: RunConfigs
    sim: Env
    real: RealSpec | None


def check_config(cfg: DictConfig) -> CheckedConfig:
    """Every check that needs no compute, so a bad value fails before any. Returns what the
    checks built: the library configs and the envs, in the run's dtype (float64 with
    `algo.float64`)."""
    if cfg.algo.name not in ALGORITHMS:
        raise ConfigError(
            f"algo.name: unknown algorithm {cfg.algo.name!r}; expected one of {tuple(ALGORITHMS)}"
        )
    for name in ("checkpoint_every", "eval_trajectories"):
        if cfg.run[name] <= 0:
            raise ConfigError(f"run.{name} must be positive, got {cfg.run[name]}")
    for name in cfg.run.compare:
        if name not in ALGORITHMS:
            raise ConfigError(
                f"run.compare: unknown algorithm {name!r}; expected any of {tuple(ALGORITHMS)}"
            )
    # Whether a Brax env exists, before what the algorithm asks of its reward.
    brax_env = build_brax_env(cfg) if cfg.env.system == "brax" else None
    configs = typed_configs(cfg)
    check_algo(cfg, configs)
    if cfg.real.engine == "gym":
        for name in (cfg.algo.name, *cfg.run.compare):
            if ALGORITHMS[name].trains_on_twin:
                raise ConfigError(
                    f"algo {name!r} trains on the real system's differentiable twin, and "
                    f"real.engine=gym ({cfg.real.gym_id}) has none"
                )
    if brax_env is not None:
        return CheckedConfig(configs, brax_env, None)
    # The run turns float64 on only once checked (`start_run`): without it, a float64
    # testbed would be built in float32, which PODS then refuses.
    with jax.enable_x64(True) if configs.float64 else nullcontext():
        sim, real = build_envs(cfg, jnp.float64 if configs.float64 else jnp.float32)
    return CheckedConfig(configs, sim, real)


def write_animation(run_dir: RunDirectory, env: CartPole, observations: dict) -> Path:
    from sim2real.animation import render_frames, write_gif

    frames = render_frames(
        list(observations.values()), list(observations), env.pole_lengths, float(env.dt)
    )
    return write_gif(run_dir.artifacts / "rollout_sim_vs_real.gif", frames, float(env.dt))


def prepare_run(cfg: DictConfig, output_dir: Path) -> RunContext:
    """Every check of a run that needs no compute (the config, the envs it builds, what its
    directory holds to resume from); writes nothing. Returns what the trainer gets."""
    checked = check_config(cfg)
    fingerprint = config_fingerprint(cfg)
    resume = read_resume(cfg, output_dir, fingerprint)
    train_key, _ = seed_streams(cfg.seed)
    run_dir = RunDirectory(output_dir, create=False)
    return RunContext(
        cfg, checked.configs, checked.sim, checked.real, train_key, run_dir, fingerprint, resume
    )


def run_experiment(ctx: RunContext) -> dict:
    """Trains, evaluates and writes the run directory of a prepared run; returns the summary."""
    start_run(ctx)
    return finish_run(ctx, ALGORITHMS[ctx.cfg.algo.name].train(ctx))


def start_run(ctx: RunContext) -> None:
    """What a prepared run does before its trainer: JAX's settings, its directory."""
    configure_jax(float64=ctx.configs.float64)
    ctx.run_dir.path.mkdir(parents=True, exist_ok=True)


def finish_run(ctx: RunContext, trained: Trained) -> dict:
    """Evaluates a trained run in sim and real and writes its summary (and animation);
    returns the summary."""
    cfg, sim, real = ctx.cfg, ctx.sim, ctx.real
    run_dir = ctx.run_dir
    run_dir.close()
    _, eval_key = seed_streams(cfg.seed)

    n_eval = cfg.run.eval_trajectories
    if real is None:
        returns = {"sim": evaluate(sim, trained.make_policy, trained.params, eval_key, n_eval)}
    else:
        # The same held-out initial states (and random commands) in both variants.
        returns = evaluate_sim_and_real(
            trained.make_policy, trained.params, sim, real.evaluation_env(n_eval), eval_key, n_eval
        )
    real_returns = returns.get("real")
    records = run_dir.read_metrics()
    last = records[-1] if records else {}
    sim_eval = returns["sim"]
    summary = {
        "algo": cfg.algo.name,
        "env": f"{sim.system_name}_{sim.task}",
        # The profile is the physics of a Brax twin or MuJoCo C rig; a gymnasium env has none.
        "real/profile": None if real is None or real.engine == "gym" else cfg.env.real_profile,
        "real/engine": None if real is None else cfg.real.engine,
        # What the policy is scored on, and (`train/env`, from the trainer) trained on.
        "real/system": None if real is None else real.name,
        "sim/system": sim.name,
        "seed": cfg.seed,
        # Whether first, then how much: the solved shares lead.
        "eval/solved_real": None if real_returns is None else real_returns.solved,
        "eval/solved_sim": sim_eval.solved,
        "eval/return_real": None if real_returns is None else real_returns.policy,
        "eval/return_sim": sim_eval.policy,
        "eval/solved_random_real": None if real_returns is None else real_returns.random_solved,
        "eval/return_random_real": None if real_returns is None else real_returns.random,
        "eval/return_random_sim": sim_eval.random,
        # The spread over the held-out starts, which a gap is judged against (`compare`).
        "eval/return_real_std": None if real_returns is None else real_returns.return_std,
        "eval/return_sim_std": sim_eval.return_std,
        # Against the best policy known on the real (`compare`): filled in where the run
        # compares with one (`run.compare`); paper_figures computes them across a sweep.
        "eval/reference": None,
        "eval/score_solved_real": None,
        "eval/score_real": None,
        "eval/trajectories": n_eval,
        "train/epochs": len(records),
        "train/wall_clock_s": last.get("train/wall_clock_s"),
        "train/sim_steps": last.get("train/sim_steps"),
        "train/final_return": last.get("train/return"),
        **trained.summary,
        "config_fingerprint": ctx.fingerprint,
    }
    if cfg.run.animation and real is not None:  # the animation draws cart-poles
        gif = write_animation(run_dir, sim, {v: r.observations for v, r in returns.items()})
        summary["artifacts/animation"] = str(gif.relative_to(run_dir.path))
    run_dir.write_summary(summary)
    return summary


def _override_key(override: str) -> str:
    """`algo.beta` of `algo.beta=0.5`, `+algo.beta=0.5` or `~algo.beta`."""
    return override.lstrip("+~").split("=", 1)[0]


def compose_compared(name: str, overrides: list[str]) -> DictConfig:
    """The config of compared algorithm `name`: the run's overrides, less the run's own
    algorithm and the `algo.` fields that `name` does not have (HDS's `algo.beta`, compared
    with PODS), which are left out with a line saying so; the shared ones (`algo.num_epochs`,
    say) apply to both."""
    from hydra import compose

    def composed(extra: list[str]) -> DictConfig:
        return compose(config_name="config", overrides=[*extra, f"algo={name}", "run.compare=[]"])

    others = [o for o in overrides if not _override_key(o).startswith("algo")]
    fields = [o for o in overrides if _override_key(o).startswith("algo.")]
    bare = composed(others)
    missing = object()
    kept = [
        o
        for o in fields
        if OmegaConf.select(bare, _override_key(o), default=missing) is not missing
    ]
    left_out = [o for o in fields if o not in kept]
    if left_out:
        print(
            f"run.compare={name}: {name} has no {', '.join(map(_override_key, left_out))}; "
            "left out of its run",
            file=sys.stderr,
        )
    return composed([*others, *kept])


def prepare_comparisons(
    cfg: DictConfig, output_dir: Path, overrides: list[str]
) -> list[RunContext]:
    """The run, then each algorithm of `run.compare` with the same env, seed and overrides
    in a subfolder of the same run directory: every one checked before any of them runs."""
    runs = [prepare_run(cfg, output_dir)]
    for name in cfg.run.compare:
        try:
            sub_cfg = compose_compared(name, overrides)
            runs.append(prepare_run(sub_cfg, output_dir / name))
        except (ConfigError, HydraException, OmegaConfBaseException) as err:
            # An override of the run's own algorithm that the compared one lacks, say.
            raise ConfigError(f"run.compare={name}: {str(err).splitlines()[0]}") from None
    return runs


def save_hydra_config(
    cfg: DictConfig, output_dir: Path, hydra_cfg: DictConfig | None = None
) -> None:
    """`.hydra/` as hydra writes it (config, hydra, overrides), written once the run has
    passed its checks (the config sets `hydra.output_subdir: null`). `hydra_cfg`: the job's
    hydra config, by default the current job's."""
    hydra_cfg = HydraConfig.instance().cfg if hydra_cfg is None else hydra_cfg
    for name, node in (
        ("config.yaml", cfg),
        ("hydra.yaml", hydra_cfg),
        ("overrides.yaml", hydra_cfg.hydra.overrides.task),
    ):
        atomic_write_bytes(output_dir / ".hydra" / name, OmegaConf.to_yaml(node).encode())


def save_compared_config(
    cfg: DictConfig, output_dir: Path, name: str, overrides: list[str]
) -> None:
    """A compared run's own `.hydra/`, so its folder is a run directory too (`deploy` loads
    its policy): its config, and the overrides `compose_compared` composed it from (the job's,
    less the `algo.` fields it lacks, with its own algorithm in the run's place)."""
    missing = object()

    def kept(override: str) -> bool:
        key = _override_key(override)
        if key == "algo" or key.startswith("run.compare"):
            return False
        return (
            not key.startswith("algo.")
            or OmegaConf.select(cfg, key, default=missing) is not missing
        )

    hydra_cfg = OmegaConf.create(OmegaConf.to_container(HydraConfig.instance().cfg))
    hydra_cfg.hydra.overrides.task = [*filter(kept, overrides), f"algo={name}", "run.compare=[]"]
    save_hydra_config(cfg, output_dir, hydra_cfg)


def run_with_comparisons(runs: list[RunContext]) -> list[dict]:
    """Runs the prepared runs in order; with several, rewrites their summaries with the
    scores (see `compare`)."""
    summaries = [run_experiment(run) for run in runs]
    directories = [run.run_dir.path for run in runs]
    if len(summaries) > 1:
        for summary, directory in zip(compare(summaries), directories):
            RunDirectory(directory).write_summary(summary)
    return summaries


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    filter_known_xla_logs()
    start = time.perf_counter()
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        overrides = list(HydraConfig.get().overrides.task)
        runs = prepare_comparisons(cfg, output_dir, overrides)
        save_hydra_config(cfg, output_dir)
        for name, run in zip(cfg.run.compare, runs[1:]):
            save_compared_config(run.cfg, run.run_dir.path, name, overrides)
        summaries = run_with_comparisons(runs)
    except ConfigError as err:
        refuse(err, [output_dir])
    print(format_table(summaries))
    ranges = format_ranges([s["algo"] for s in summaries], setting_fingerprint(cfg))
    if ranges is not None:
        print(ranges)
    print(f"done in {time.perf_counter() - start:.0f} s: {output_dir}")
    return sweep_objective(summaries[0])


def sweep_objective(summary: dict) -> float:
    """What a sweep maximizes (optuna): the return in real, in sim without a real."""
    real = summary["eval/return_real"]
    return real if real is not None else summary["eval/return_sim"]


def refuse(err: ConfigError, output_dirs: list[Path]) -> NoReturn:
    """Prints a refused config's one line and exits with status 2, leaving no empty run
    directory behind (hydra made them)."""
    print(f"error: {err}", file=sys.stderr)
    for output_dir in output_dirs:
        if output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()
    sys.exit(2)


if __name__ == "__main__":
    main()
