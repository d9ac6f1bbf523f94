"""How gradients through rollouts explode with the horizon, and what gradient windows and
float64 do about it. Prints JSON (the data of the paper's gradient-norm figure).

    .venv/bin/python benchmarks/gradient_norms.py [--horizons 10 25 50 100 150 200]
        [--batch 64] [--windows 20] [--testbed cartpole_swingup_sim] [--seed 0] [--out FILE]

For each dtype (float32, float64) and gradient window (none, then each of --windows): from
--batch random initial states of the testbed, playing uniform random commands in [-1, 1]
open loop (the same states and commands in every setting), the gradient of the return
V_H = sum_{t<H} r_t with respect to the whole action sequence, and its L2 norm per
trajectory, for every horizon H in --horizons.

One rollout of max(H) steps and one batch of VJPs per (dtype, window) serve every horizon:
V_H's gradient is the VJP of the reward sequence with the cotangent 1[t < H], and actions
after step H get an exactly zero gradient (causality), so each H gives the same numbers a
rollout of H steps would, for one compilation instead of one per horizon. Windows start at
t = 0 either way (`pods.rollout`: the state gradient stops at every multiple of K).

A norm that is not finite (the float32 gradient overflowed) is written as null and counted
in `nonfinite`. `seconds` is the wall time of each (dtype, window), compile included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from contextlib import nullcontext

import jax
import jax.numpy as jnp
import numpy as np

from pods.rollout import reset_batch, trajectory_of_actions
from pods.runtime import configure_jax, filter_known_xla_logs
from sim2real import make_testbed

DTYPES = ("float32", "float64")


def starting_points(testbed: str, batch: int, horizon: int, seed: int):
    """(initial states, action sequences) drawn once in float32, as numpy pytrees.

    Both dtypes start from these exact values (float32 is exactly representable in float64):
    drawn separately per dtype, the random streams would give different states, and the
    comparison would mix precision with luck.
    """
    env = make_testbed(testbed, episode_length=horizon, dtype=jnp.float32)
    key_states, key_actions = jax.random.split(jax.random.PRNGKey(seed))
    states = reset_batch(env, key_states, batch)
    actions = jax.random.uniform(key_actions, (batch, horizon, env.action_size), minval=-1.0)
    return jax.device_get((states, actions))


def gradient_norms(
    testbed: str, dtype: str, window: int | None, horizons: list[int], states, actions
) -> np.ndarray:
    """[horizons, batch] L2 norms of dV_H/da, one row per horizon H."""
    longest = actions.shape[1]
    with jax.enable_x64(True) if dtype == "float64" else nullcontext():
        env = make_testbed(testbed, episode_length=longest, dtype=jnp.dtype(dtype))
        states, actions = jax.tree.map(
            lambda x: jnp.asarray(x, dtype) if np.issubdtype(x.dtype, np.floating) else x,
            (states, actions),
        )
        # Row i of `masks` is the cotangent 1[t < H_i]: the VJP it pulls back is dV_{H_i}/da.
        masks = (jnp.arange(longest)[None, :] < jnp.asarray(horizons)[:, None]).astype(dtype)

        def norms(state, action_sequence):
            def rewards(a):
                return trajectory_of_actions(env, state, a, gradient_window=window).rewards

            _, pull_back = jax.vjp(rewards, action_sequence)
            (grads,) = jax.vmap(pull_back)(masks)
            return jnp.sqrt(jnp.sum(grads**2, axis=(1, 2)))

        return np.asarray(jax.jit(jax.vmap(norms, out_axes=1))(states, actions), dtype=float)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizons", type=int, nargs="+", default=[10, 25, 50, 100, 150, 200])
    parser.add_argument("--batch", type=int, default=64, help="random initial states")
    parser.add_argument(
        "--windows", type=int, nargs="*", default=[20], help="gradient windows K (besides none)"
    )
    parser.add_argument("--testbed", default="cartpole_swingup_sim")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    if min(args.horizons) <= 0 or args.batch <= 0 or any(k <= 0 for k in args.windows):
        parser.error("horizons, batch and windows must be positive")
    configure_jax()

    horizons = sorted(set(args.horizons))
    results = []
    start = time.perf_counter()
    states, actions = starting_points(args.testbed, args.batch, max(horizons), args.seed)
    for dtype in DTYPES:
        for window in (None, *args.windows):
            began = time.perf_counter()
            norms = gradient_norms(args.testbed, dtype, window, horizons, states, actions)
            seconds = time.perf_counter() - began
            finite = np.isfinite(norms)
            results.append(
                {
                    "dtype": dtype,
                    "gradient_window": window,
                    "horizons": horizons,
                    "norms": [
                        [float(x) if ok else None for x, ok in zip(row, ok_row)]
                        for row, ok_row in zip(norms, finite)
                    ],
                    "nonfinite": [int(n) for n in (~finite).sum(axis=1)],
                    "seconds": round(seconds, 2),
                }
            )
            medians = [f"{np.median(row):.3g}" for row in norms]
            print(
                f"{dtype} window={window}: median |dV/da| {medians} ({seconds:.0f} s)",
                file=sys.stderr,
            )
    report = {
        "command": "python benchmarks/gradient_norms.py " + " ".join(argv or sys.argv[1:]),
        "testbed": args.testbed,
        "actions": "uniform random in [-1, 1], open loop",
        "batch": args.batch,
        "seed": args.seed,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
        },
        "results": results,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        # Written whole, then renamed: a reader (paper_figures) never sees half a file.
        partial = f"{args.out}.partial"
        with open(partial, "w") as f:
            f.write(text + "\n")
        os.replace(partial, args.out)
    return report


if __name__ == "__main__":
    filter_known_xla_logs()  # before anything compiles, --help included
    main()
