"""The second-order direction's cost: one tangent per action against tangents shared by windows.

`pods.derivatives.gauss_newton` builds the Jacobian of the rollout with forward mode. With a
gradient window of W steps no window's states see another window's actions, so W tangents
(tangent j moves actions j, W + j, ...) give exactly the Jacobian that one tangent per action
gives (tested in tests/test_pods.py), and the Gauss-Newton matrix is block-diagonal: one
W x W Cholesky per window instead of one N x N. This times both on k batched rollouts
(value, gradient, Gauss-Newton direction), side by side in one process; prints JSON.

    .venv/bin/python benchmarks/gauss_newton.py [--num-trajectories 128] [--window 10]
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

from pods.runtime import configure_jax, filter_known_xla_logs


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="cartpole_swingup_sim")
    parser.add_argument("--num-trajectories", type=int, default=128)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7, help="timed calls (median reported)")
    args = parser.parse_args()

    configure_jax()
    from pods.derivatives import gauss_newton, newton_direction
    from pods.rollout import reset_batch
    from sim2real import make_testbed

    env = make_testbed(args.env)
    states = reset_batch(env, jax.random.PRNGKey(0), args.num_trajectories)
    actions = 0.3 * jax.random.normal(
        jax.random.PRNGKey(1), (args.num_trajectories, args.horizon, env.action_size)
    )

    def directions(period):
        def one(state, a):
            gn = gauss_newton(env, state, a, gradient_window=args.window, tangent_period=period)
            return gn.value, newton_direction(gn, 1e-3)

        return jax.jit(jax.vmap(one))

    results, outputs = {}, {}
    for name, period in [("per_action", args.horizon), ("per_window_offset", args.window)]:
        start = time.perf_counter()
        compiled = directions(period).lower(states, actions).compile()
        compile_s = time.perf_counter() - start
        outputs[name] = jax.block_until_ready(compiled(states, actions))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(states, actions))
            times.append(time.perf_counter() - start)
        results[name] = {
            "tangents": period * env.action_size,
            "compile_s": round(compile_s, 2),
            "median_s": round(statistics.median(times), 4),
            "times_s": [round(t, 4) for t in times],
        }
    (value_a, dir_a), (value_b, dir_b) = outputs["per_action"], outputs["per_window_offset"]
    scale = float(jnp.max(jnp.abs(dir_a)))
    print(
        json.dumps(
            {
                "benchmark": "gauss_newton",
                "env": args.env,
                "num_trajectories": args.num_trajectories,
                "horizon": args.horizon,
                "gradient_window": args.window,
                "results": results,
                "speedup": round(
                    results["per_action"]["median_s"] / results["per_window_offset"]["median_s"],
                    2,
                ),
                "max_value_difference": float(jnp.max(jnp.abs(value_a - value_b))),
                "max_direction_difference_relative": float(jnp.max(jnp.abs(dir_a - dir_b))) / scale,
                "jax": jax.__version__,
                "backend": jax.default_backend(),
                "cpu_count": os.cpu_count(),
                "load_average_1m": round(os.getloadavg()[0], 2),
                "machine": platform.machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    filter_known_xla_logs()  # before anything compiles, --help included
    main()
