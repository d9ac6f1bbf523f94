"""Swing-up learning curves: PODS return vs wall-clock for several seeds, and Brax PPO's.

Writes `curve.json`, `curve.csv` and `curve.png` under --out (default runs/pods_swingup_curve).
`train/return` is the mean return of the deterministic policy over the epoch's k fresh initial
states, before that epoch's update; `final_return` is over 256 fresh initial states.
Wall-clock includes compiling (cold or from the persistent cache: see `compile_cache`).

    .venv/bin/python benchmarks/pods_swingup_curve.py --presets second_order_elite first_order \\
        --seeds 0 1 2 --epochs 150 --ppo-seeds 0
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pods.runtime import configure_jax, filter_known_xla_logs

PRESETS = {
    # PODS as in the paper: one first-order step per epoch, no exploration.
    "first_order": dict(order=1),
    # What learned balance here: more distillation per epoch, so the closed-loop policy
    # actually reproduces the improved trajectories.
    "first_order_distill": dict(order=1, distill_passes=16, learning_rate=3e-3),
    "second_order": dict(order=2, distill_passes=16, learning_rate=3e-3),
    "second_order_explore": dict(
        order=2,
        distill_passes=16,
        learning_rate=3e-3,
        exploration_noise=0.3,
        exploration_decay=0.97,
    ),
    # What escapes the swing-up plateau: 128 noisy rollouts of which only the best 16
    # improved trajectories are distilled (the others sit in worse local optima, and
    # distilling all averages them), gradients that see 10 steps ahead (a local credit
    # assignment that finds the catch at the top), exploration that decays slowly, and a
    # learning rate small enough that one epoch's elite cannot undo a catch.
    "second_order_elite": dict(
        order=2,
        num_trajectories=128,
        distill_passes=16,
        learning_rate=1e-3,
        exploration_noise=0.3,
        exploration_decay=0.99,
        elite_fraction=0.125,
        gradient_window=10,
    ),
    "first_order_explore": dict(
        order=1,
        distill_passes=16,
        learning_rate=3e-3,
        exploration_noise=0.3,
        exploration_decay=0.97,
    ),
}


def run_pods(
    preset: str,
    seed: int,
    epochs: int,
    env_name: str,
    num_trajectories: int | None,
    overrides: dict,
):
    from pods.config import PODSConfig
    from pods.rollout import evaluate_policy
    from pods.train import train
    from sim2real import make_testbed

    env = make_testbed(env_name)
    config = PODSConfig(num_epochs=epochs, **PRESETS[preset])
    if num_trajectories is not None:
        overrides = {"num_trajectories": num_trajectories, **overrides}
    config = dataclasses.replace(config, **overrides)
    curve = []

    def progress(epoch, metrics):
        curve.append({"epoch": epoch, **metrics})
        if epoch % 10 == 0 or epoch == epochs - 1:
            print(
                f"[{preset} seed {seed}] epoch {epoch} return {metrics['train/return']:.2f} "
                f"improved {metrics['train/return_improved']:.2f} t {metrics['train/wall_clock_s']:.0f}s",
                flush=True,
            )

    make_policy, params, history = train(
        config, env, jax.random.PRNGKey(seed), progress_fn=progress
    )
    final = evaluate_policy(env, make_policy(params), jax.random.PRNGKey(10_000 + seed), 256)
    return {
        "algo": "pods",
        "seed": seed,
        "config": dataclasses.asdict(config),
        # Runs with overrides are labelled apart, so that merged curves never mix configs.
        "preset": preset + "".join(f" {k}={v}" for k, v in sorted(overrides.items())),
        "final_return": float(jnp.mean(final)),
        "nonfinite_total": float(sum(m["train/rejected_nonfinite"] for m in history)),
        "curve": [
            {
                "wall_clock_s": m["train/wall_clock_s"],
                "sim_steps": m["train/sim_steps"],
                "return": m["train/return"],
                "return_improved": m["train/return_improved"],
            }
            for m in history
        ],
    }


def run_ppo(seed: int, env_name: str, num_timesteps: int):
    from brax import envs
    from brax.training.agents.ppo import train as ppo

    import sim2real  # noqa: F401  (registers the testbeds with Brax)

    env = envs.get_environment(env_name)
    curve = []
    start = time.perf_counter()

    def progress(step, metrics):
        curve.append(
            {
                "wall_clock_s": time.perf_counter() - start,
                "sim_steps": float(step),
                "return": float(metrics["eval/episode_reward"]),
            }
        )
        print(
            f"[ppo seed {seed}] steps {step} return {curve[-1]['return']:.2f} "
            f"t {curve[-1]['wall_clock_s']:.0f}s",
            flush=True,
        )

    ppo.train(
        env,
        num_timesteps=num_timesteps,
        episode_length=env.episode_length,
        num_envs=256,
        batch_size=256,
        num_minibatches=8,
        unroll_length=20,
        num_updates_per_batch=4,
        learning_rate=3e-4,
        entropy_cost=1e-2,
        discounting=0.97,
        normalize_observations=True,
        num_evals=12,
        num_eval_envs=128,
        deterministic_eval=True,
        seed=seed,
        progress_fn=progress,
    )
    return {
        "algo": "ppo",
        "preset": "brax_ppo",
        "seed": seed,
        "final_return": curve[-1]["return"],
        "num_timesteps": num_timesteps,
        "curve": curve,
    }


def plot(runs: list[dict], path: Path, env_name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {}
    for run in runs:
        label = run["preset"]
        color = colors.setdefault(label, f"C{len(colors)}")
        t = [p["wall_clock_s"] for p in run["curve"]]
        r = [p["return"] for p in run["curve"]]
        ax.plot(
            t,
            r,
            color=color,
            alpha=0.8,
            lw=1.2,
            label=label
            if sum(x["preset"] == label for x in runs[: runs.index(run) + 1]) == 1
            else None,
            ls="--" if run["algo"] == "ppo" else "-",
            marker="o" if run["algo"] == "ppo" else None,
            ms=3,
        )
    ax.set_xlabel("wall-clock (s, incl. compile)")
    ax.set_ylabel("return (100 steps, deterministic policy)")
    versus = " vs Brax PPO" if any(run["algo"] == "ppo" for run in runs) else ""
    ax.set_title(f"{env_name}: PODS{versus}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["first_order"], choices=sorted(PRESETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument(
        "--num-trajectories", type=int, default=None, help="k (default: the preset's, or 64)"
    )
    parser.add_argument("--env", default="cartpole_swingup_sim")
    parser.add_argument("--ppo-seeds", type=int, nargs="*", default=[])
    parser.add_argument("--ppo-timesteps", type=int, default=3_000_000)
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="PODSConfig overrides for every preset, e.g. distill_passes=8",
    )
    parser.add_argument("--out", default="runs/pods_swingup_curve")
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="CURVE_JSON",
        help="train nothing: merge these curve.json files into --out (json, csv, png)",
    )
    args = parser.parse_args()

    cache = configure_jax()
    overrides = {}
    for item in args.set:
        field, value = item.split("=", 1)
        overrides[field] = json.loads(value) if value[:1] in "-0123456789[{tn" else value
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    if args.merge:
        for path in args.merge:
            runs.extend(json.loads(Path(path).read_text())["runs"])
        args.ppo_seeds, args.presets = [], []
    for seed in args.ppo_seeds:
        runs.append(run_ppo(seed, args.env, args.ppo_timesteps))
    for preset in args.presets:
        for seed in args.seeds:
            runs.append(
                run_pods(preset, seed, args.epochs, args.env, args.num_trajectories, overrides)
            )
            (out / "curve.json").write_text(
                json.dumps({"env": args.env, "compile_cache": str(cache), "runs": runs}, indent=1)
            )

    summary = {}
    for run in runs:
        summary.setdefault(run["preset"], []).append(run["final_return"])
    (out / "curve.json").write_text(
        json.dumps(
            {
                "env": args.env,
                "compile_cache": str(cache),
                "summary": {
                    k: {"final_returns": v, "mean": float(np.mean(v))} for k, v in summary.items()
                },
                "runs": runs,
            },
            indent=1,
        )
    )
    with open(out / "curve.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["algo", "preset", "seed", "wall_clock_s", "sim_steps", "return"])
        for run in runs:
            for p in run["curve"]:
                writer.writerow(
                    [
                        run["algo"],
                        run["preset"],
                        run["seed"],
                        round(p["wall_clock_s"], 3),
                        int(p["sim_steps"]),
                        round(p["return"], 4),
                    ]
                )
    plot(runs, out / "curve.png", args.env)
    print(
        json.dumps(
            {
                k: {"final_returns": [round(x, 2) for x in v], "mean": round(float(np.mean(v)), 2)}
                for k, v in summary.items()
            }
        )
    )


if __name__ == "__main__":
    filter_known_xla_logs()  # before anything compiles, --help included
    main()
