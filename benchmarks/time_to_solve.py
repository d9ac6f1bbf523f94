"""Time to solve: wall-clock from a cold start until PODS, Brax PPO and Brax APG get there.

Every (method, seed) runs in a subprocess of its own, one after another, with an empty JAX
compilation cache (`$PODS_JAX_CACHE`, a fresh temporary folder), so its clock includes
starting Python, the imports, building the env and every compile. At every evaluation point
(PODS: every `--eval-every` epochs; PPO and APG: each of Brax's `--brax-evals` evaluations,
the first one before any update) the benchmark scores the current deterministic policy on
the same `--eval-states` held-out initial states for every run (the evaluation stream of
`HELD_OUT_SEED`, see `sim2real.evaluation.seed_streams`; training draws only from training
streams): its mean return and `solved`, the share of those states from which the pole ends
upright and stays there (`sim2real.evaluation.solved_criterion`). The clock stops while the
benchmark evaluates, so every time below excludes that evaluation (Brax's own evaluation,
part of its training loop, is counted).

Per run, each `curve` point has `wall_s` (from the subprocess's start), `trainer_s` (the
trainer's own `train/wall_clock_s`, from its call), `sim_steps`, `return` and `solved`; the
run has `time_to_90pct_s` (the first point whose return reaches 90% of the best held-out
return of any run of the env in this invocation), `time_to_solved_s` (the first point with
`solved >= --solved-share`), both also on the trainer's clock, `first_eval_s` (the first
point), `first_update_s` (the first point after a training update: imports, env and the cold
compile of training), the final return and solved share, `eval_s` (the clock's pauses),
`process_s` (the whole subprocess, evaluations included), `cpu_s` (its user + system time),
the load average before and after it and, for PPO and APG, `brax_evaluation_s` (the time in
Brax's own evaluations: with brax 0.14.2 on jax 0.9 Brax's evaluator recompiles at every
evaluation of APG, which APG's times therefore include). A time is null where the run never
got there. A run whose parameters went non-finite (Brax's APG can) keeps its curve, its
returns null from there on, and its `diverged` message. Per method, the medians over seeds
count a run that never got there as infinitely late, so a median is null when half the
seeds or more never did (a diverged run's final return counts as the worst);
`pods_over_ppo_time_to_90pct` is the ratio of the two medians (0 where PPO's is never and
PODS's is not).

The settings are the experiments' defaults, composed from `experiments/conf` as
`python -m experiments.train algo=METHOD env=ENV` composes them (PODS: `solving/pods.yaml`;
PPO and APG: `baselines.brax_agents`' configs, 3M env steps on 256 envs for PPO), with
`num_evals` set to `--brax-evals` and any `--set METHOD.FIELD=VALUE` overrides (hydra
syntax). Brax rounds PPO's env steps up to whole training steps per evaluation: the default
38 evaluations keep it at 3.03M (31 would train 3.69M). The JSON goes to stdout (and `--out`,
rewritten after every run); progress lines go to stderr. Run it on an otherwise idle
machine: the times are wall-clock.

    .venv/bin/python benchmarks/time_to_solve.py --env cartpole_swingup_sim \\
        --methods pods ppo apg --seeds 0 1 2 --out runs/time_to_solve_swingup.json

A smoke test at tiny sizes (2 minutes on an idle 2-core CPU, nearly all of it compiling):

    .venv/bin/python benchmarks/time_to_solve.py --seeds 0 --eval-states 8 --brax-evals 3 \\
        --set pods.num_epochs=3 pods.num_trajectories=16 pods.order=1 \\
        ppo.num_timesteps=20000 ppo.num_envs=32 ppo.batch_size=32 ppo.num_minibatches=4 \\
        apg.policy_updates=4 apg.num_envs=8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where benchmarks/dynamics_models.py
# would shadow the `dynamics_models` package (which the experiments' configs import).
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

METHODS = ("pods", "ppo", "apg")
ENVS = (
    "cartpole_swingup_sim",
    "cartpole_balance_sim",
    "double_cartpole_swingup_sim",
    "double_cartpole_balance_sim",
)
HELD_OUT_SEED = 0
"""Every run is scored on the initial states of this seed's evaluation stream."""


def now() -> float:
    """CLOCK_MONOTONIC: system-wide on Linux, so the parent's reading just before it starts a
    subprocess is that subprocess's start on the subprocess's own clock."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# ---- In the subprocess: one cold run. -------------------------------------------------------


class Curve:
    """The evaluation points of one run, on a clock that stops while the benchmark evaluates."""

    def __init__(self, started_at: float, label: str):
        self.started_at = started_at
        self.label = label
        self.evaluation_s = 0.0
        self.points: list[dict] = []

    def add(self, trainer_s: float, sim_steps: float, evaluate: Callable[[], tuple[float, float]]):
        """A point now: the trainer's clock (`trainer_s`, started after this run's clock and
        so holding all of its pauses) and `evaluate()`'s (return, solved share), paused."""
        wall_s = now() - self.started_at - self.evaluation_s
        trainer_s -= self.evaluation_s
        start = now()
        mean_return, solved = evaluate()
        self.evaluation_s += now() - start
        self.points.append(
            {
                "wall_s": round(wall_s, 3),
                "trainer_s": round(trainer_s, 3),
                "sim_steps": sim_steps,
                "return": round(mean_return, 3),
                "solved": round(solved, 4),
            }
        )
        print(
            f"[{self.label}] {wall_s:7.1f} s (trainer {trainer_s:7.1f} s) steps {sim_steps:.0f} "
            f"return {mean_return:6.2f} solved {solved:.0%}",
            file=sys.stderr,
            flush=True,
        )


def held_out_evaluator(env, make_policy, key, num_states: int) -> Callable:
    """`params -> (mean return, solved share)` of the deterministic `make_policy(params)` from
    `num_states` initial states drawn from `key` (the same ones at every call). The params are
    fetched to the host first: Brax's come with shardings that change between evaluations,
    and would otherwise recompile the evaluation."""
    import jax
    import jax.numpy as jnp

    from pods.rollout import episode_of_policy, reset_batch
    from sim2real.evaluation import solved_criterion

    criterion = solved_criterion(env)

    @jax.jit
    def evaluate(params):
        policy = make_policy(params)
        states = reset_batch(env, key, num_states)
        episodes = jax.vmap(lambda s: episode_of_policy(env, s, policy, env.episode_length))(states)
        solved = criterion(episodes.observations, episodes.active > 0)
        return jnp.mean(episodes.value), jnp.mean(solved)

    return lambda params: tuple(float(x) for x in evaluate(jax.device_get(params)))


def library_config(config_class: type, fields: dict):
    """The config dataclass back from its JSON fields (JSON has lists where it had tuples)."""
    return config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def train_pods(spec: dict, env, train_key, held_out_key, curve: Curve) -> dict:
    """PODS through `pods.train.train`, whose `checkpoint_fn` hands over the state (and so
    the params) after every epoch."""
    from pods.config import PODSConfig
    from pods.train import make_pods, train

    config = library_config(PODSConfig, spec["config"])
    make_policy = make_pods(config, env).make_policy
    evaluate = held_out_evaluator(env, make_policy, held_out_key, spec["eval_states"])

    def after_epoch(state, metrics):
        epoch = int(state.epoch)
        if epoch % spec["eval_every"] == 0 or epoch == config.num_epochs:
            curve.add(
                metrics["train/wall_clock_s"],
                metrics["train/sim_steps"],
                lambda: evaluate(state.params),
            )

    train(config, env, train_key, checkpoint_fn=after_epoch)
    return {}


def train_brax(spec: dict, env, train_key, held_out_key, curve: Curve) -> dict:
    """Brax's PPO or APG through `baselines.brax_agents`. Neither adapter, nor Brax's APG,
    hands out the params of an evaluation, so Brax's `acting.Evaluator` is replaced, in this
    subprocess and for this call only, by one that first keeps the params it evaluates (and
    times Brax's own evaluation, which the clock counts: it is part of Brax's loop)."""
    from unittest import mock

    import jax
    from brax.training import acting

    from baselines.brax_agents import APGConfig, PPOConfig, train_apg, train_ppo

    config_class, train = {"ppo": (PPOConfig, train_ppo), "apg": (APGConfig, train_apg)}[
        spec["method"]
    ]
    config = library_config(config_class, spec["config"])
    evaluated = {"brax_s": 0.0}

    class KeepingEvaluator(acting.Evaluator):
        def __init__(self, eval_env, eval_policy_fn, **options):
            super().__init__(eval_env, eval_policy_fn, **options)
            # Brax's deterministic policy (eval_policy_fn is built with deterministic=True)
            # as obs -> action: the mode draws no sample, so the key is never read.
            unused_key = jax.random.PRNGKey(0)

            def make_policy(params):
                policy = eval_policy_fn(params)
                return lambda obs: policy(obs, unused_key)[0]

            evaluated["evaluate"] = held_out_evaluator(
                env, make_policy, held_out_key, spec["eval_states"]
            )

        def run_evaluation(self, policy_params, *args, **kwargs):
            evaluated["params"] = policy_params
            start = now()
            metrics = super().run_evaluation(policy_params, *args, **kwargs)
            evaluated["brax_s"] += now() - start
            return metrics

    def after_evaluation(_index, metrics):
        curve.add(
            metrics["train/wall_clock_s"],
            metrics["train/sim_steps"],
            lambda: evaluated["evaluate"](evaluated["params"]),
        )

    with mock.patch.object(acting, "Evaluator", KeepingEvaluator):
        train(config, env, train_key, progress_fn=after_evaluation)
    return {"brax_evaluation_s": round(evaluated["brax_s"], 3)}


def run_one(spec: dict) -> None:
    """The subprocess: trains one method from one seed, writes its curve to `spec["result"]`."""
    from pods.runtime import configure_jax, filter_known_xla_logs

    filter_known_xla_logs()
    configure_jax()  # into $PODS_JAX_CACHE: the parent's fresh, empty folder
    import jax

    from sim2real import make_testbed
    from sim2real.evaluation import seed_streams

    curve = Curve(spec["started_at"], f"{spec['method']} seed {spec['seed']}")
    env = make_testbed(spec["env"], **spec["env_options"])
    train_key, _ = seed_streams(spec["seed"])  # as experiments.train draws it
    _, held_out_key = seed_streams(HELD_OUT_SEED)
    trainer = train_pods if spec["method"] == "pods" else train_brax
    try:
        facts = trainer(spec, env, train_key, held_out_key, curve)
    except FloatingPointError as error:  # a run that diverged is a result: its curve so far
        facts = {"diverged": str(error)}
    result = {
        **facts,
        "curve": [{**p, "return": finite_or_none(p["return"])} for p in curve.points],
        "eval_s": round(curve.evaluation_s, 3),
        "jax_backend": jax.default_backend(),
    }
    Path(spec["result"]).write_text(json.dumps(result))


# ---- In the parent: configs, the runs one after another, the analysis. ----------------------


def compose_configs(
    methods: list[str], env_name: str, overrides: dict[str, list[str]], brax_evals: int
) -> dict[str, dict]:
    """Per method, its config's fields and the env's options, as `experiments.train` composes
    them for `algo=METHOD env=...` with the overrides."""
    from hydra import compose, initialize_config_module

    from experiments.schema import register_schemas
    from experiments.trainers import algo_config

    register_schemas()
    configs = {}
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        for method in methods:
            evaluations = [] if method == "pods" else [f"algo.num_evals={brax_evals}"]
            cfg = compose(
                config_name="config",
                overrides=[
                    f"algo={method}",
                    f"env={env_name.removesuffix('_sim')}",
                    *evaluations,
                    *overrides[method],
                ],
            )
            configs[method] = {
                "config": dataclasses.asdict(algo_config(cfg)),
                "env_options": {
                    "episode_length": cfg.env.episode_length,
                    "backend": cfg.env.backend,
                },
            }
    return configs


def run_cold(spec: dict) -> dict:
    """Runs `spec` in a subprocess with an empty compilation cache; its measured record."""
    with tempfile.TemporaryDirectory(prefix="time_to_solve_") as scratch:
        result_path = Path(scratch, "result.json")
        environment = {**os.environ, "PODS_JAX_CACHE": str(Path(scratch, "jax_cache"))}
        load_before = os.getloadavg()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        started_at = now()
        child_spec = {**spec, "started_at": started_at, "result": str(result_path)}
        subprocess.run(
            [sys.executable, __file__, "--run-one", json.dumps(child_spec)],
            env=environment,
            check=True,
        )
        process_s = now() - started_at
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = json.loads(result_path.read_text())
    cpu_s = usage.ru_utime + usage.ru_stime - children.ru_utime - children.ru_stime
    return {
        "method": spec["method"],
        "seed": spec["seed"],
        **result,
        "process_s": round(process_s, 3),
        "cpu_s": round(cpu_s, 3),
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }


def first_point(curve: list[dict], reached: Callable[[dict], bool]) -> dict | None:
    return next((point for point in curve if reached(point)), None)


def timings(run: dict, threshold: float | None, solved_share: float) -> dict:
    """When `run` first reached the threshold return and the solved share, and the rest of
    its per-run figures."""
    curve = run["curve"]
    at_90pct = None
    if threshold is not None:
        at_90pct = first_point(
            curve, lambda p: p["return"] is not None and p["return"] >= threshold
        )
    at_solved = first_point(curve, lambda p: p["solved"] >= solved_share)
    first_update = first_point(curve, lambda p: p["sim_steps"] > 0)

    def clock(point: dict | None, name: str) -> float | None:
        return None if point is None else point[name]

    return {
        "time_to_90pct_s": clock(at_90pct, "wall_s"),
        "time_to_90pct_trainer_s": clock(at_90pct, "trainer_s"),
        "time_to_solved_s": clock(at_solved, "wall_s"),
        "time_to_solved_trainer_s": clock(at_solved, "trainer_s"),
        "first_eval_s": curve[0]["wall_s"],
        "first_update_s": clock(first_update, "wall_s"),
        "best_return": max(finite_returns(curve), default=None),
        "final_return": curve[-1]["return"],
        "final_solved": curve[-1]["solved"],
    }


def finite_or_none(value: float) -> float | None:
    """A return, None where it is not finite (a diverged run's NaN): JSON has no NaN."""
    return value if math.isfinite(value) else None


def finite_returns(curve: list[dict]) -> list[float]:
    """The curve's returns less a diverged run's (None)."""
    return [p["return"] for p in curve if p["return"] is not None]


def median_or_none(values: list[float | None], none_as: float) -> float | None:
    """The median, each None counting as `none_as` (+inf: a time never reached; -inf: a
    diverged run's return); None where the median is that."""
    median = statistics.median(none_as if v is None else v for v in values)
    return None if math.isinf(median) else round(median, 3)


def summarize(runs: list[dict]) -> dict:
    summary = {}
    for method in dict.fromkeys(run["method"] for run in runs):
        mine = [run for run in runs if run["method"] == method]

        def values(key: str, mine=mine) -> list:
            return [run[key] for run in mine]

        summary[method] = {
            "seeds": values("seed"),
            "time_to_90pct_s": values("time_to_90pct_s"),
            "time_to_solved_s": values("time_to_solved_s"),
            "final_return": values("final_return"),
            "final_solved": values("final_solved"),
            "seeds_reaching_90pct": sum(v is not None for v in values("time_to_90pct_s")),
            "seeds_solving": sum(v is not None for v in values("time_to_solved_s")),
            **{
                f"median_{key}": median_or_none(values(key), math.inf)
                for key in (
                    "time_to_90pct_s",
                    "time_to_90pct_trainer_s",
                    "time_to_solved_s",
                    "time_to_solved_trainer_s",
                    "first_eval_s",
                    "first_update_s",
                    "process_s",
                )
            },
            "median_final_return": median_or_none(values("final_return"), -math.inf),
            "median_final_solved": round(statistics.median(values("final_solved")), 4),
        }
    return summary


def ratio(summary: dict, key: str) -> float | None:
    """pods' median `key` over ppo's: 0 where PODS's median is a time and PPO's is never
    (a finite time over an infinitely late one); None where PODS's is never, or a method
    was not run."""
    if "pods" not in summary or "ppo" not in summary:
        return None
    pods, ppo = summary["pods"][key], summary["ppo"][key]
    if pods is None:
        return None
    if ppo is None:
        return 0.0
    return round(pods / ppo, 3) if ppo > 0 else None


def report(args: argparse.Namespace, configs: dict, measured: list[dict]) -> dict:
    best = max(
        (
            (value, run["method"], run["seed"])
            for run in measured
            for value in finite_returns(run["curve"])
        ),
        key=lambda entry: entry[0],
        default=(None, None, None),  # every run diverged before its first evaluation
    )
    threshold = 0.9 * best[0] if best[0] is not None and best[0] > 0 else None
    runs = [{**run, **timings(run, threshold, args.solved_share)} for run in measured]
    summary = summarize(runs)
    return {
        "env": args.env,
        "methods": args.methods,
        "seeds": args.seeds,
        "eval_states": args.eval_states,
        "eval_every": args.eval_every,
        "solved_share": args.solved_share,
        "overrides": args.set,
        "best_return": {"return": best[0], "method": best[1], "seed": best[2]},
        "threshold_90pct": None if threshold is None else round(threshold, 3),
        "pods_over_ppo_time_to_90pct": ratio(summary, "median_time_to_90pct_s"),
        "pods_over_ppo_time_to_solved": ratio(summary, "median_time_to_solved_s"),
        "summary": summary,
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            **{name: metadata.version(name) for name in ("jax", "jaxlib", "brax")},
        },
        "configs": configs,
        "runs": runs,
    }


def parse_overrides(items: list[str], methods: list[str]) -> dict[str, list[str]]:
    """`METHOD.FIELD=VALUE` -> per method, hydra's `algo.FIELD=VALUE`."""
    overrides = {method: [] for method in methods}
    for item in items:
        method, _, override = item.partition(".")
        if method not in overrides or "=" not in override:
            raise ValueError(f"--set {item}: expected METHOD.FIELD=VALUE, METHOD in {methods}")
        overrides[method].append(f"algo.{override}")
    return overrides


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default=ENVS[0], choices=ENVS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-states", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=1, help="PODS epochs per evaluation")
    parser.add_argument(
        "--brax-evals", type=int, default=38, help="PPO's and APG's num_evals (>= 2)"
    )
    parser.add_argument("--solved-share", type=float, default=0.9)
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="METHOD.FIELD=VALUE",
        help="config overrides, e.g. pods.num_epochs=100 ppo.num_timesteps=2000000",
    )
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one is not None:
        run_one(json.loads(args.run_one))
        return
    if args.eval_states < 1 or args.eval_every < 1 or args.brax_evals < 2:
        parser.error("--eval-states and --eval-every must be >= 1, --brax-evals >= 2")
    try:
        overrides = parse_overrides(args.set, args.methods)
    except ValueError as err:
        parser.error(str(err))

    configs = compose_configs(args.methods, args.env, overrides, args.brax_evals)
    measured = []
    for method in args.methods:
        for seed in args.seeds:
            spec = {
                "method": method,
                "seed": seed,
                "env": args.env,
                "eval_states": args.eval_states,
                "eval_every": args.eval_every,
                **configs[method],
            }
            measured.append(run_cold(spec))
            if args.out:  # after every run, so a long sitting cut short keeps its runs
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(report(args, configs, measured), indent=1))
    print(json.dumps(report(args, configs, measured), indent=1))


if __name__ == "__main__":
    main()
