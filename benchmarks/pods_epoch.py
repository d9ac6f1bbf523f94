"""PODS epoch time against its simulation work alone; prints JSON.

For each order (1, 2) on `cartpole_swingup_sim` with k=64 rollouts of 100 steps (or the
PODSConfig fields `--set` gives, e.g. the solving settings' `--set num_trajectories=128
elite_fraction=0.125 gradient_window=10 exploration_noise=0.3 distill_passes=16`):
- `compile_s`: lowering + compiling the whole epoch, cold (a fresh compilation cache unless
  --warm-cache);
- `epoch_s`: median wall time of an epoch (rollouts, improvement, line search, distillation,
  metrics), after the compile;
- `simulation_s`: median wall time of the epoch's simulation work alone, compiled on its own
  and timed in the same run: the policy rollout(s), the derivatives through the rollout, and
  the line-search rollouts, without distillation or bookkeeping;
- `epoch_over_simulation`: the ratio (target <= 1.5).

    .venv/bin/python benchmarks/pods_epoch.py [--epochs 7] [--orders 1 2] [--warm-cache]
        [--backend generalized|mjx|chain] [--set FIELD=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import jax

from pods.runtime import configure_jax, filter_known_xla_logs


def time_calls(fn, args_for_call, repeats: int) -> list[float]:
    times = []
    for i in range(repeats):
        args = args_for_call(i)
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times


def benchmark(
    order: int,
    epochs: int,
    num_trajectories: int,
    horizon: int,
    env_name: str,
    backend: str,
    fields: dict,
) -> dict:
    from pods.config import PODSConfig
    from pods.state import init_training_state
    from pods.train import make_pods
    from sim2real import make_testbed

    env = make_testbed(env_name, backend=backend)
    config = PODSConfig(
        **{"num_trajectories": num_trajectories, **fields, "horizon": horizon, "order": order}
    )
    pods = make_pods(config, env)
    improve, epoch = pods.improve, pods.epoch
    state = init_training_state(config, env, pods.network, jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(1), epochs + 1)

    start = time.perf_counter()
    epoch_compiled = jax.jit(epoch).lower(state, keys[0]).compile()
    compile_s = time.perf_counter() - start

    states = [state]
    for key in keys[:-1]:
        states.append(epoch_compiled(states[-1], key)[0])
    jax.block_until_ready(states[-1])
    epoch_times = time_calls(epoch_compiled, lambda i: (states[i], keys[i]), epochs)

    start = time.perf_counter()
    improve_compiled = jax.jit(improve).lower(state.params, state.epoch, keys[0]).compile()
    improve_compile_s = time.perf_counter() - start
    improve_times = time_calls(
        improve_compiled, lambda i: (states[i].params, states[i].epoch, keys[i]), epochs
    )

    epoch_s = statistics.median(epoch_times)
    simulation_s = statistics.median(improve_times)
    return {
        "order": order,
        "compile_s": round(compile_s, 2),
        "epoch_s": round(epoch_s, 4),
        "simulation_s": round(simulation_s, 4),
        "epoch_over_simulation": round(epoch_s / simulation_s, 3),
        "simulation_compile_s": round(improve_compile_s, 2),
        "epoch_times_s": [round(t, 4) for t in epoch_times],
        "simulation_times_s": [round(t, 4) for t in improve_times],
        "sim_steps_per_epoch": config.sim_steps_per_epoch(horizon),
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--epochs", type=int, default=7, help="timed epochs per order (median reported)"
    )
    parser.add_argument("--orders", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--num-trajectories", type=int, default=64)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--env", default="cartpole_swingup_sim")
    parser.add_argument("--backend", default="generalized", help="the testbed's backend")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="PODSConfig fields, VALUE as JSON (gradient_window=10)",
    )
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="use the repo's persistent compilation cache (compile_s is then a cache load)",
    )
    args = parser.parse_args()

    if args.warm_cache:
        cache = configure_jax()
    else:
        cache = configure_jax(cache_dir=tempfile.mkdtemp(prefix="pods_bench_cache_"))
    fields = {}
    for item in args.set:
        name, _, value = item.partition("=")
        fields[name] = json.loads(value)
    results = [
        benchmark(
            o, args.epochs, args.num_trajectories, args.horizon, args.env, args.backend, fields
        )
        for o in args.orders
    ]
    print(
        json.dumps(
            {
                "benchmark": "pods_epoch",
                "env": args.env,
                "testbed_backend": args.backend,
                "fields": fields,
                "num_trajectories": args.num_trajectories,
                "horizon": args.horizon,
                "compile_cache": "warm" if args.warm_cache else f"cold ({cache})",
                "jax": jax.__version__,
                "backend": jax.default_backend(),
                "cpu_count": os.cpu_count(),
                "load_average_1m": round(os.getloadavg()[0], 2),
                "machine": platform.machine(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    filter_known_xla_logs()  # before anything compiles, --help included
    main()
