"""k-step prediction error of learned dynamics models vs the plain simulator, on the real
cart-pole, as a function of how many real transitions they were trained on. Prints JSON.

    .venv/bin/python benchmarks/dynamics_models.py [--sizes 500 2000 10000] [--out FILE]

Data: `cartpole_swingup_real` (`--profile friction`, the default) or `cartpole_swingup_lab`
(`--profile lab`: its observations are what the lab's sensors read) from its swing-up start, driven by random commands with lag-1
correlation 0.8 (white noise barely moves the cart); 100-step trajectories. Training sets are
the first 500 / 2,000 / 10,000 transitions of one collection (split 80/20 by trajectory for
early stopping); the test set is 20 further trajectories from other seeds. k-step RMSE is over
state coordinates [x, theta, xdot, thetadot] (theta wrapped), from every 5th start, open loop.

Models: `sim` (the `sim` testbed, no learning), `mlp` (predicts the step in state
coordinates), `mlp_obs_delta` (the same MLP predicting raw observation deltas, cos/sin
included: the choice `mlp` is compared against), `mlp_rollout_loss` (`mlp` trained on a
5-step open-loop loss), `ensemble` (5 such MLPs), `residual` (sim step plus a learned
correction). `train_seconds` is wall time of `train` including
compilation (cached across runs by the persistent compilation cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

# Run as a script, this file's folder comes first on sys.path, and this file's name would
# shadow the `dynamics_models` package it benchmarks.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import jax  # noqa: E402

from dynamics_models import (  # noqa: E402
    EnsembleDynamics,
    MLPDynamics,
    ObsLayout,
    ResidualDynamics,
    TrainingConfig,
    collect_transitions,
    k_step_error,
    train,
)
from pods.runtime import configure_jax, filter_known_xla_logs  # noqa: E402
from sim2real import REAL_PROFILES, make_testbed  # noqa: E402

KS = (1, 10, 50)
MODELS = ("mlp", "mlp_obs_delta", "mlp_rollout_loss", "ensemble", "residual")


def make_model(name, key, train_data, layout, sim, ensemble_size):
    """A fresh, untrained model of kind `name` (see the module docstring)."""
    if name in ("mlp", "mlp_rollout_loss"):
        return MLPDynamics.for_dataset(key, train_data, layout)
    if name == "mlp_obs_delta":
        return MLPDynamics.for_dataset(key, train_data)
    if name == "ensemble":
        return EnsembleDynamics.for_dataset(key, train_data, ensemble_size, layout=layout)
    if name == "residual":
        return ResidualDynamics.for_dataset(key, train_data, sim)
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[500, 2000, 10000],
        help="numbers of real training transitions (multiples of 100)",
    )
    parser.add_argument("--test-trajectories", type=int, default=20)
    parser.add_argument("--max-steps", type=int, default=5000, help="gradient steps at most")
    parser.add_argument("--ensemble-size", type=int, default=5)
    parser.add_argument(
        "--profile",
        choices=("friction", "lab"),
        default="friction",
        help="the real system: the in-family friction profile (the control) or the lab rig",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    configure_jax()

    horizon = 100
    real = make_testbed(f"cartpole_swingup_{REAL_PROFILES[args.profile]}", episode_length=horizon)
    sim = make_testbed("cartpole_swingup_sim", episode_length=horizon)
    layout = ObsLayout.of_env(real)
    key = jax.random.PRNGKey(args.seed)
    key_data, key_test, key_models = jax.random.split(key, 3)
    n_max = -(-max(args.sizes) // horizon)
    start = time.perf_counter()
    # One collection serves every size (the first n transitions), and one more held out.
    data = collect_transitions(real, key_data, n_max, action_correlation=0.8)
    test = collect_transitions(real, key_test, args.test_trajectories, action_correlation=0.8)
    collect_seconds = time.perf_counter() - start

    def evaluate(stepper) -> dict:
        # Every stepper is scored in the testbed's state coordinates, whatever it predicts in.
        return k_step_error(stepper, test, max(KS), start_stride=5, layout=layout).to_json(KS)

    config = TrainingConfig(max_steps=args.max_steps, eval_every=100, patience=10)
    report = {
        "command": "python benchmarks/dynamics_models.py " + " ".join(argv or sys.argv[1:]),
        "testbed": real.name,
        "profile": args.profile,
        "physics_real": real.physics.__dict__,
        "state_coordinates": ["x", "theta", "xdot", "thetadot"],
        "test": {"trajectories": test.n_trajectories, "horizon": horizon, "start_stride": 5},
        "training": {**config.__dict__, "validation_fraction": 0.2},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
        },
        "collect_seconds": collect_seconds,
        "sim": evaluate(sim),
        "results": {},
    }
    for size in args.sizes:
        train_data, val_data = data.first(size).split(0.2, seed=args.seed)
        keys = jax.random.split(jax.random.fold_in(key_models, size), len(MODELS))
        row = {}
        for name, model_key in zip(MODELS, keys, strict=True):
            model_config = dataclasses.replace(
                config, rollout_horizon=5 if name == "mlp_rollout_loss" else 1
            )
            model, metrics = train(
                make_model(name, model_key, train_data, layout, sim, args.ensemble_size),
                train_data,
                val_data,
                model_config,
                jax.random.fold_in(key, size),
            )
            row[name] = {
                **evaluate(model),
                "train_seconds": round(metrics["train/seconds"], 2),
                "train_steps": metrics["train/steps"],
                "rollout_horizon": model_config.rollout_horizon,
                "best_validation_loss": metrics["train/best_validation_loss"],
            }
            print(
                f"{size:>6} {name:<14} rmse@{KS}={[round(x, 4) for x in row[name]['rmse']]} "
                f"train {row[name]['train_seconds']} s",
                file=sys.stderr,
            )
        report["results"][str(size)] = {
            "transitions": {
                "train": train_data.n_transitions,
                "validation": val_data.n_transitions,
            },
            **row,
        }
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return report


if __name__ == "__main__":
    filter_known_xla_logs()  # before anything compiles, --help included
    main()
