"""Rollout throughput: env steps per second, forward and forward+backward, per Brax backend.

    python benchmarks/rollout_throughput.py [--testbed cartpole_swingup_real] [--repeats 5]

Prints one JSON object. For each backend and batch size: the median wall-clock of a batched
rollout of `--horizon` steps (forward: the return; backward: the gradient of the return with
respect to every action), env steps per second, and the compile time of each function. The
persistent compilation cache is left off, so compile times are real compiles.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from pods.rollout import reset_batch, trajectory_of_actions
from pods.runtime import filter_known_xla_logs
from sim2real.testbeds import BACKENDS, make_testbed


def _time(fn, *args, repeats: int) -> tuple[float, float]:
    """(compile seconds, median run seconds) of a jitted function."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - start)
    return compile_s, statistics.median(runs)


def measure(testbed: str, backend: str, batch: int, horizon: int, repeats: int) -> dict:
    env = make_testbed(testbed, backend=backend)
    states = reset_batch(env, jax.random.PRNGKey(0), batch)
    actions = jax.random.uniform(jax.random.PRNGKey(1), (batch, horizon, 1), minval=-1, maxval=1)

    def value(a, s):
        return trajectory_of_actions(env, s, a).value

    forward = jax.vmap(value)
    backward = jax.vmap(jax.grad(value))
    result = {"backend": backend, "batch": batch, "horizon": horizon}
    for name, fn in (("forward", forward), ("forward_backward", backward)):
        compile_s, run_s = _time(fn, actions, states, repeats=repeats)
        result[name] = {
            "compile_s": round(compile_s, 2),
            "median_s": round(run_s, 5),
            "env_steps_per_s": round(batch * horizon / run_s),
        }
    result["backward_over_forward"] = round(
        result["forward_backward"]["median_s"] / result["forward"]["median_s"], 2
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--testbed", default="cartpole_swingup_real")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64, 256])
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    results = [
        measure(args.testbed, backend, batch, args.horizon, args.repeats)
        for backend in args.backends
        for batch in args.batches
    ]
    print(
        json.dumps(
            {
                "benchmark": "rollout_throughput",
                "testbed": args.testbed,
                "device": jax.devices()[0].device_kind,
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                "jax": jax.__version__,
                "dtype": str(jnp.zeros(()).dtype),
                "repeats": args.repeats,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    filter_known_xla_logs()  # before anything compiles, --help included
    main()
