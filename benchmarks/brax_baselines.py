"""Brax's APG and PPO on a testbed: return vs wall-clock and env steps; prints JSON.

Per algorithm and seed, through `baselines.brax_agents`:
- `curve`: at every evaluation, `train/return` (the deterministic policy's mean return over
  Brax's evaluation envs, fresh initial states each time), `train/sim_steps` (training env
  steps so far) and `train/wall_clock_s` (from the call, compiling included);
- `cpu_s`: the process's CPU time (user + system, all threads) at the same points: on a
  shared machine a steadier measure of the work than wall-clock;
- `time_to_90pct_best_s` / `cpu_to_90pct_best_s` / `steps_to_90pct_best`: at the first
  evaluation whose return reaches 90% of the run's best one;
- `eval_sim` / `eval_real`: the final policy's mean (and std) return over `--eval-states`
  held-out initial states, the same states in `{system}_{task}_sim` and `..._real`, rolled out
  by `pods.rollout.trajectory_of_policy`.
The summary gives per algorithm the median over seeds. Wall-clock depends on the load of the
machine (`load_average` is recorded before and after every run) and on the compilation cache
(`--cold-cache` compiles everything afresh).

    PYTHONPATH=. .venv/bin/python benchmarks/brax_baselines.py --algos ppo apg \\
        --env cartpole_swingup_sim --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time

import jax
import numpy as np

from pods.runtime import configure_jax, filter_known_xla_logs

ALGOS = ("apg", "ppo", "ppo_dr")
DR_RANGES = {
    "slider_damping": (0.0, 2.0),
    "hinge_damping": (0.0, 0.02),
    "slider_friction": (0.0, 2.0),
    "actuator_gain": (0.6, 1.0),
}
"""`ppo_dr`'s ranges: the nominal `sim` physics at one end, twice the `real` system's extra
physics at the other (real: damping 1.0 and 0.01, friction 1.0, gain 0.8)."""


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """`FIELD=VALUE` for every algo, `ALGO.FIELD=VALUE` for one; values are JSON or strings."""
    overrides = {algo: {} for algo in ALGOS}
    for item in items:
        name, value = item.split("=", 1)
        value = json.loads(value) if value[:1] in "-0123456789[{tfn" else value
        value = tuple(value) if isinstance(value, list) else value
        algo, _, field = name.rpartition(".")
        for target in [algo] if algo else ALGOS:
            overrides[target][field] = value
    return overrides


def make_config(algo: str, budget: int | None, num_evals: int | None, overrides: dict):
    from baselines.brax_agents import APGConfig, PPOConfig
    from baselines.domain_randomization import PhysicsRanges

    if algo == "apg":
        config = APGConfig(**overrides)
        if budget is not None:
            per_update = config.num_envs * config.horizon_length
            config = dataclasses.replace(config, policy_updates=max(budget // per_update, 1))
    else:
        config = PPOConfig(**overrides)
        if algo == "ppo_dr":
            config = dataclasses.replace(config, randomization=PhysicsRanges(**DR_RANGES))
        if budget is not None:
            config = dataclasses.replace(config, num_timesteps=budget)
    if num_evals is not None:
        config = dataclasses.replace(config, num_evals=num_evals)
    return config


def first_reaching(curve: list[dict], fraction: float) -> dict | None:
    best = max(p["return"] for p in curve)
    if best <= 0:
        return None
    return next(p for p in curve if p["return"] >= fraction * best)


def run(algo: str, seed: int, env_name: str, config, eval_states: int) -> dict:
    from baselines.brax_agents import train_apg, train_ppo
    from pods.rollout import reset_batch, trajectory_of_policy
    from sim2real import make_testbed, parse_testbed_name

    env = make_testbed(env_name)
    train = train_apg if algo == "apg" else train_ppo

    cpu_times = []

    def progress(index, metrics):
        cpu_times.append(time.process_time() - cpu_start)
        print(
            f"[{algo} seed {seed}] eval {index} steps {metrics['train/sim_steps']:.0f} "
            f"return {metrics['train/return']:.2f} t {metrics['train/wall_clock_s']:.0f}s",
            flush=True,
        )

    load_before = os.getloadavg()
    cpu_start = time.process_time()
    make_policy, params, history = train(
        config, env, jax.random.PRNGKey(seed), progress_fn=progress
    )
    load_after = os.getloadavg()
    curve = [
        {
            "sim_steps": m["train/sim_steps"],
            "wall_clock_s": round(m["train/wall_clock_s"], 2),
            "cpu_s": round(cpu_s, 2),
            "return": round(m["train/return"], 3),
        }
        for m, cpu_s in zip(history, cpu_times, strict=True)
    ]
    reached = first_reaching(curve, 0.9)

    system, task, _ = parse_testbed_name(env_name)
    policy = make_policy(params)
    # Held-out: a key no trainer draws from; the same initial states in sim and in real.
    held_out = jax.random.PRNGKey(10_000 + seed)
    evaluation = {}
    for variant in ("sim", "real"):
        test_env = make_testbed(f"{system}_{task}_{variant}", episode_length=env.episode_length)
        states = reset_batch(test_env, held_out, eval_states)
        returns = jax.jit(
            jax.vmap(
                lambda s, e=test_env: trajectory_of_policy(e, s, policy, e.episode_length).value
            )
        )(states)
        evaluation[f"eval_{variant}"] = {
            "mean": round(float(np.mean(returns)), 3),
            "std": round(float(np.std(returns)), 3),
        }
    return {
        "algo": algo,
        "seed": seed,
        "env": env_name,
        "config": dataclasses.asdict(config),
        "final_return": curve[-1]["return"],
        "best_return": max(p["return"] for p in curve),
        "time_to_90pct_best_s": None if reached is None else reached["wall_clock_s"],
        "cpu_to_90pct_best_s": None if reached is None else reached["cpu_s"],
        "steps_to_90pct_best": None if reached is None else reached["sim_steps"],
        "train_wall_clock_s": curve[-1]["wall_clock_s"],
        "train_cpu_s": curve[-1]["cpu_s"],
        "train_sim_steps": curve[-1]["sim_steps"],
        **evaluation,
        "load_average": {"before": load_before, "after": load_after},
        "curve": curve,
    }


def summarize(runs: list[dict]) -> dict:
    summary = {}
    for algo in dict.fromkeys(r["algo"] for r in runs):
        mine = [r for r in runs if r["algo"] == algo]

        def median(key, mine=mine):
            values = [r[key] for r in mine if r[key] is not None]
            return round(statistics.median(values), 3) if values else None

        summary[algo] = {
            "seeds": [r["seed"] for r in mine],
            "final_return": [r["final_return"] for r in mine],
            "eval_sim": [r["eval_sim"]["mean"] for r in mine],
            "eval_real": [r["eval_real"]["mean"] for r in mine],
            "median_final_return": median("final_return"),
            "median_best_return": median("best_return"),
            "median_time_to_90pct_best_s": median("time_to_90pct_best_s"),
            "median_steps_to_90pct_best": median("steps_to_90pct_best"),
            "median_cpu_to_90pct_best_s": median("cpu_to_90pct_best_s"),
            "median_train_wall_clock_s": median("train_wall_clock_s"),
            "median_train_cpu_s": median("train_cpu_s"),
            "median_eval_sim": round(statistics.median(r["eval_sim"]["mean"] for r in mine), 3),
            "median_eval_real": round(statistics.median(r["eval_real"]["mean"] for r in mine), 3),
        }
    return summary


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--algos", nargs="+", default=["ppo", "apg"], choices=ALGOS)
    parser.add_argument("--env", default="cartpole_swingup_sim")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        help="training env steps (PPO: num_timesteps; APG: policy_updates * num_envs * "
        "horizon_length); default: the config's",
    )
    parser.add_argument("--num-evals", type=int, default=None)
    parser.add_argument("--eval-states", type=int, default=64)
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="config overrides: num_envs=128 for every algo, ppo.entropy_cost=0.02 for one",
    )
    parser.add_argument("--cold-cache", action="store_true", help="compile into a fresh cache")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args()

    cache = configure_jax(cache_dir=tempfile.mkdtemp() if args.cold_cache else None)
    overrides = parse_overrides(args.set)
    runs = []
    for algo in args.algos:
        config = make_config(algo, args.budget, args.num_evals, overrides[algo])
        for seed in args.seeds:
            runs.append(run(algo, seed, args.env, config, args.eval_states))
    result = {
        "env": args.env,
        "platform": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "compile_cache": str(cache),
        "summary": summarize(runs),
        "runs": runs,
    }
    text = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    filter_known_xla_logs()  # before anything compiles, --help included
    main()
