"""Env steps per second and epoch time of PODS at scale, on whatever devices are present;
prints JSON.

For each k in `--trajectories` and each seed count S in `--seeds`, one PODS epoch at the
solving settings (`experiments/conf/solving/pods.yaml`: second order, 10-step windows,
exploration noise, the best eighth distilled) on `--env` with k rollouts of the env's
episode length: S = 1 is `pods.train.make_pods`'s epoch, S > 1 the epoch vmapped over S
seeds (`pods.drivers.seed_batch_epoch`, as `train_seeds` runs it). The rollouts are sharded
over every local device (`pods.sharding`; one device: unsharded). Per point:
- `compile_s`: the first epoch's time less a steady epoch's: tracing, lowering and
  compiling it (a fresh compilation cache per invocation unless --warm-cache);
- `epoch_s`: the median wall time of `--epochs` epochs after one untimed;
- `env_steps_per_s`: S * k * the env steps one trajectory costs an epoch (the evaluation
  rollout, the noisy data rollout, and per improvement step the derivative rollout and the
  line search's candidates: `PODSConfig.sim_steps_per_epoch`; the derivative passes through
  them are not counted as steps) over `epoch_s`. Every one of those steps is a step of the
  differentiable simulator, and the derivative rollout's steps are differentiated;
- `peak_memory_bytes`: the device's peak allocation, where the device reports it (GPUs).

    .venv/bin/python benchmarks/gpu_scale.py [--trajectories 256 1024 4096] [--seeds 1 4]
        [--epochs 3] [--env cartpole_swingup_sim] [--backend chain] [--warm-cache]

The target on one H100/H200-class GPU is >= 1M env steps/s at k = 4,096.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from experiments.conf import solving_pods_fields
from pods.runtime import configure_jax, filter_known_xla_logs


def peak_memory(devices) -> int | None:
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in devices]
    return None if any(p is None for p in peaks) else int(sum(peaks))


def benchmark(env, fields: dict, k: int, seeds: int, epochs: int) -> dict:
    from pods.config import PODSConfig
    from pods.drivers import seed_batch_epoch
    from pods.state import init_training_state
    from pods.train import make_pods

    config = PODSConfig(**{**fields, "num_trajectories": k})
    pods = make_pods(config, env)
    keys = [jax.random.PRNGKey(s) for s in range(seeds)]
    states = [init_training_state(config, env, pods.network, key) for key in keys]
    if seeds == 1:
        state, epoch = states[0], jax.jit(pods.epoch)

        def call(state, i):
            return epoch(state, jax.random.fold_in(keys[0], i))

    else:
        state = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
        batched, stacked_keys = jax.jit(seed_batch_epoch(pods.epoch)), jnp.stack(keys)

        def call(state, i):
            return batched(state, stacked_keys, jnp.asarray(i, jnp.int32))

    start = time.perf_counter()
    state, _ = jax.block_until_ready(call(state, 0))
    first_s = time.perf_counter() - start
    times = []
    for i in range(1, epochs + 1):
        start = time.perf_counter()
        state, _ = jax.block_until_ready(call(state, i))
        times.append(time.perf_counter() - start)
    epoch_s = statistics.median(times)
    steps = seeds * config.sim_steps_per_epoch(env.episode_length)
    return {
        "trajectories": k,
        "seeds": seeds,
        "compile_s": round(first_s - epoch_s, 2),
        "epoch_s": round(epoch_s, 4),
        "epoch_times_s": [round(t, 4) for t in times],
        "env_steps_per_epoch": steps,
        "env_steps_per_s": round(steps / epoch_s),
        "peak_memory_bytes": peak_memory(jax.local_devices()),
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trajectories", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (median reported)")
    parser.add_argument("--env", default="cartpole_swingup_sim")
    parser.add_argument("--backend", default="chain", help="the testbed's backend")
    parser.add_argument("--warm-cache", action="store_true", help="the repo's compilation cache")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    for name in ("trajectories", "seeds"):
        if any(n < 1 for n in getattr(args, name)):
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    if args.epochs < 1:
        parser.error(f"--epochs must be positive, got {args.epochs}")

    cache = configure_jax() if args.warm_cache else configure_jax(cache_dir=tempfile.mkdtemp())
    from sim2real import make_testbed

    try:
        env = make_testbed(args.env, backend=args.backend)
    except ValueError as err:
        parser.error(str(err))
    fields = solving_pods_fields()
    results = []
    for k in args.trajectories:
        for seeds in args.seeds:
            results.append(benchmark(env, fields, k, seeds, args.epochs))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    devices = jax.local_devices()
    report = {
        "benchmark": "gpu_scale",
        "env": args.env,
        "testbed_backend": args.backend,
        "fields": fields,
        "horizon": env.episode_length,
        "devices": [f"{d.platform}:{d.device_kind}" for d in devices],
        "device_count": len(devices),
        "compile_cache": "warm" if args.warm_cache else f"cold ({cache})",
        "jax": jax.__version__,
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "machine": platform.machine(),
        "results": results,
    }
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    filter_known_xla_logs()  # before anything compiles, --help included
    main()
