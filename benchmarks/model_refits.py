"""The cost of the sim2real loop's model refits as its real data grows. Prints JSON.

    .venv/bin/python benchmarks/model_refits.py [--episodes 20 25 30 35 40] [--model residual]

Data: `cartpole_swingup_real` driven by random commands (lag-1 correlation 0.8), 100-step
episodes. Each refit fits a fresh model (`dynamics_models.ModelConfig` defaults, except
`--max-steps`) to the first n episodes, 80/20 train/validation split, as a round of
`sim2real.loop` does with 20 initial and 5 more episodes per round. `refit_s` is the wall
time of each fit, compilation included, from an empty compilation cache. `capacity` is the
number of rows the fit pads its training windows to: a refit whose capacity (and the
validation's) was seen before reuses the compiled fit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

# Run as a script, this file's folder comes first on sys.path, where benchmarks/dynamics_models.py
# would shadow the `dynamics_models` package.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import jax  # noqa: E402

from dynamics_models import ModelConfig, collect_transitions, make_model  # noqa: E402
from dynamics_models import train as fit_model  # noqa: E402
from dynamics_models.training import capacity  # noqa: E402
from pods.runtime import configure_jax, filter_known_xla_logs  # noqa: E402
from sim2real import make_testbed  # noqa: E402

HORIZON = 100


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, nargs="+", default=[20, 25, 30, 35, 40])
    parser.add_argument("--model", default="residual", choices=("mlp", "ensemble", "residual"))
    parser.add_argument("--max-steps", type=int, default=300, help="gradient steps per fit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if sorted(args.episodes) != args.episodes or args.episodes[0] < 5:
        parser.error(f"--episodes must be increasing and at least 5, got {args.episodes}")

    cache = configure_jax(cache_dir=tempfile.mkdtemp(prefix="model_refits_cache_"))
    real = make_testbed("cartpole_swingup_real", episode_length=HORIZON)
    sim = make_testbed("cartpole_swingup_sim", episode_length=HORIZON)
    data = collect_transitions(
        real, jax.random.PRNGKey(args.seed), args.episodes[-1], action_correlation=0.8
    )
    config = ModelConfig(kind=args.model, max_steps=args.max_steps)
    refits = []
    for round_, n in enumerate(args.episodes):
        train_data, validation_data = data.select(slice(0, n)).split(0.2, seed=round_)
        model = make_model(config, jax.random.PRNGKey(round_), train_data, sim)
        start = time.perf_counter()
        fit_model(model, train_data, validation_data, config.training_config())
        refits.append(
            {
                "episodes": n,
                "train_windows": train_data.n_transitions,
                "capacity": capacity(train_data.n_transitions),
                "validation_capacity": capacity(validation_data.n_transitions),
                "refit_s": round(time.perf_counter() - start, 3),
            }
        )
    report = {
        "benchmark": "model_refits",
        "model": args.model,
        "max_steps": args.max_steps,
        "refits": refits,
        "total_s": round(sum(r["refit_s"] for r in refits), 2),
        "compile_cache": f"cold ({cache})",
        "jax": jax.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    filter_known_xla_logs()  # before anything compiles, --help included
    main()
